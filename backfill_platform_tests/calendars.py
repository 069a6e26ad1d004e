"""Holiday calendars for the tests: a second, different pandas calendar to set as BACKFILL_HOLIDAY_CALENDAR
(``backfill_platform_tests.calendars:ExchangeHolidayCalendar``)."""

from pandas.tseries.holiday import (
    AbstractHolidayCalendar,
    GoodFriday,
    Holiday,
    USLaborDay,
    USMartinLutherKingJr,
    USMemorialDay,
    USPresidentsDay,
    USThanksgivingDay,
    nearest_workday,
)

EXCHANGE_CALENDAR = "backfill_platform_tests.calendars:ExchangeHolidayCalendar"


class ExchangeHolidayCalendar(AbstractHolidayCalendar):
    """Shaped like a stock exchange's: the federal holidays with Good Friday, without Columbus Day and
    Veterans Day (the exchange is open on those)."""

    rules = [
        Holiday("New Year's Day", month=1, day=1, observance=nearest_workday),
        USMartinLutherKingJr,
        USPresidentsDay,
        GoodFriday,
        USMemorialDay,
        Holiday("Juneteenth National Independence Day", month=6, day=19, start_date="2022-01-01",
                observance=nearest_workday),
        Holiday("Independence Day", month=7, day=4, observance=nearest_workday),
        USLaborDay,
        USThanksgivingDay,
        Holiday("Christmas Day", month=12, day=25, observance=nearest_workday),
    ]
