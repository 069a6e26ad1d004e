package databricks.emulator;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.stream.Stream;

import org.apache.spark.sql.catalyst.analysis.NamespaceAlreadyExistsException;
import org.apache.spark.sql.catalyst.analysis.NoSuchNamespaceException;
import org.apache.spark.sql.catalyst.analysis.NoSuchTableException;
import org.apache.spark.sql.catalyst.analysis.NonEmptyNamespaceException;
import org.apache.spark.sql.catalyst.analysis.TableAlreadyExistsException;
import org.apache.spark.sql.connector.catalog.Column;
import org.apache.spark.sql.connector.catalog.Identifier;
import org.apache.spark.sql.connector.catalog.NamespaceChange;
import org.apache.spark.sql.connector.catalog.StagedTable;
import org.apache.spark.sql.connector.catalog.StagingTableCatalog;
import org.apache.spark.sql.connector.catalog.SupportsNamespaces;
import org.apache.spark.sql.connector.catalog.Table;
import org.apache.spark.sql.connector.catalog.TableCatalog;
import org.apache.spark.sql.connector.catalog.TableCatalogCapability;
import org.apache.spark.sql.connector.catalog.TableChange;
import org.apache.spark.sql.connector.catalog.TableInfo;
import org.apache.spark.sql.connector.catalog.TableWritePrivilege;
import org.apache.spark.sql.connector.expressions.Transform;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;

/**
 * One catalog of the emulated workspace's Unity Catalog metastore: {@code <catalog>.<schema>.<table>}.
 *
 * <p>Registered as {@code spark.sql.catalog.<catalog>=databricks.emulator.UnityCatalog} with
 * {@code spark.sql.catalog.<catalog>.root=<warehouse>}. A schema is the folder
 * {@code <warehouse>/<catalog>/<schema>} and each of its tables a managed Delta table in
 * {@code <warehouse>/<catalog>/<schema>/<table>}: the file system is the metastore, so every driver JVM
 * (the cluster's, each job cluster's) sees the same catalog, as every cluster of a workspace does.
 * Table operations go to Delta's catalog (the session catalog, {@code DeltaCatalog}) for the table's
 * path, so reads, writes, {@code DESCRIBE HISTORY}, {@code RESTORE}, time travel and MERGE are Delta's
 * own. Names are case-insensitive (stored lower-case), as in Unity Catalog.
 */
public class UnityCatalog implements StagingTableCatalog, SupportsNamespaces {
  private String name;
  private Path root;

  @Override
  public void initialize(String name, CaseInsensitiveStringMap options) {
    this.name = name;
    String warehouse = options.get("root");
    if (warehouse == null || warehouse.isEmpty()) {
      throw new IllegalArgumentException("spark.sql.catalog." + name + ".root (the warehouse folder) is not set");
    }
    this.root = Paths.get(warehouse).toAbsolutePath().resolve(name.toLowerCase(Locale.ROOT));
  }

  @Override
  public String name() {
    return name;
  }

  // ------------------------------------------------------------------------------ mapping

  /** A schema or table name as its folder name: lower-case, and never a path ({@code ..}, {@code /}). */
  private static String part(String value) {
    String folder = value.toLowerCase(Locale.ROOT);
    if (folder.isEmpty() || folder.startsWith(".") || folder.contains("/") || folder.contains("\\")) {
      throw new IllegalArgumentException("Not a valid Unity Catalog name in the emulator: " + value);
    }
    return folder;
  }

  private Path schemaFolder(String[] namespace) {
    return root.resolve(part(namespace[0]));
  }

  private Path tableFolder(Identifier ident) {
    return schemaFolder(ident.namespace()).resolve(part(ident.name()));
  }

  private static boolean isTable(Path folder) {
    return Files.isDirectory(folder.resolve("_delta_log"));
  }

  /** The session catalog (Delta's): it serves the table by its path. */
  private static StagingTableCatalog delta() {
    Object catalog = org.apache.spark.sql.classic.SparkSession.active().sessionState().catalogManager()
        .catalog("spark_catalog");
    if (!(catalog instanceof StagingTableCatalog)) {
      throw new IllegalStateException(
          "the emulated Unity Catalog needs spark.sql.catalog.spark_catalog="
              + "org.apache.spark.sql.delta.catalog.DeltaCatalog, not " + catalog.getClass().getName());
    }
    return (StagingTableCatalog) catalog;
  }

  private static Identifier byPath(Path folder) {
    return Identifier.of(new String[] {"delta"}, folder.toString());
  }

  private Identifier existing(Identifier ident) throws NoSuchTableException {
    if (ident.namespace().length != 1 || !isTable(tableFolder(ident))) {
      throw new NoSuchTableException(Identifier.of(withCatalog(ident.namespace()), ident.name()));
    }
    return byPath(tableFolder(ident));
  }

  private Identifier creatable(Identifier ident, Map<String, String> properties)
      throws NoSuchNamespaceException {
    checkNamespace(ident.namespace());
    if (properties.containsKey(TableCatalog.PROP_LOCATION)) {
      throw new UnsupportedOperationException(
          "The emulated Unity Catalog has managed tables only: no LOCATION (external tables) for "
              + name + "." + String.join(".", ident.namespace()) + "." + ident.name());
    }
    return byPath(tableFolder(ident));
  }

  private static Map<String, String> withoutLocation(Map<String, String> properties) {
    Map<String, String> copy = new HashMap<>(properties);
    copy.remove(TableCatalog.PROP_IS_MANAGED_LOCATION);
    return copy;
  }

  private void checkNamespace(String[] namespace) throws NoSuchNamespaceException {
    if (!namespaceExists(namespace)) {
      throw new NoSuchNamespaceException(withCatalog(namespace));
    }
  }

  private String[] withCatalog(String[] namespace) {
    String[] parts = new String[namespace.length + 1];
    parts[0] = name;
    System.arraycopy(namespace, 0, parts, 1, namespace.length);
    return parts;
  }

  private static List<Path> children(Path folder) {
    if (!Files.isDirectory(folder)) {
      return List.of();
    }
    try (Stream<Path> stream = Files.list(folder)) {
      return stream.filter(Files::isDirectory).filter(p -> !p.getFileName().toString().startsWith("."))
          .sorted().toList();
    } catch (IOException error) {
      throw new UncheckedIOException(error);
    }
  }

  private static void deleteTree(Path folder) {
    if (!Files.exists(folder)) {
      return;
    }
    try (Stream<Path> stream = Files.walk(folder)) {
      for (Path path : stream.sorted(Comparator.reverseOrder()).toList()) {
        Files.delete(path);
      }
    } catch (IOException error) {
      throw new UncheckedIOException(error);
    }
  }

  // -------------------------------------------------------------------------------- tables

  @Override
  public Set<TableCatalogCapability> capabilities() {
    return delta().capabilities();
  }

  @Override
  public Identifier[] listTables(String[] namespace) throws NoSuchNamespaceException {
    checkNamespace(namespace);
    return children(schemaFolder(namespace)).stream().filter(UnityCatalog::isTable)
        .map(folder -> Identifier.of(namespace, folder.getFileName().toString())).toArray(Identifier[]::new);
  }

  @Override
  public Table loadTable(Identifier ident) throws NoSuchTableException {
    return delta().loadTable(existing(ident));
  }

  @Override
  public Table loadTable(Identifier ident, Set<TableWritePrivilege> privileges) throws NoSuchTableException {
    return delta().loadTable(existing(ident), privileges);
  }

  @Override
  public Table loadTable(Identifier ident, String version) throws NoSuchTableException {
    return delta().loadTable(existing(ident), version);
  }

  @Override
  public Table loadTable(Identifier ident, long timestamp) throws NoSuchTableException {
    return delta().loadTable(existing(ident), timestamp);
  }

  @Override
  public void invalidateTable(Identifier ident) {
    if (ident.namespace().length == 1) {
      delta().invalidateTable(byPath(tableFolder(ident)));
    }
  }

  @Override
  public boolean tableExists(Identifier ident) {
    return ident.namespace().length == 1 && isTable(tableFolder(ident));
  }

  private void checkAbsent(Identifier ident) throws TableAlreadyExistsException {
    if (tableExists(ident)) {
      throw new TableAlreadyExistsException(ident);
    }
  }

  @Override
  @SuppressWarnings("deprecation")
  public Table createTable(Identifier ident, StructType schema, Transform[] partitions, Map<String, String> properties)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    checkAbsent(ident);
    return delta().createTable(creatable(ident, properties), schema, partitions, withoutLocation(properties));
  }

  @Override
  public Table createTable(Identifier ident, Column[] columns, Transform[] partitions, Map<String, String> properties)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    checkAbsent(ident);
    return delta().createTable(creatable(ident, properties), columns, partitions, withoutLocation(properties));
  }

  @Override
  public Table createTable(Identifier ident, TableInfo info)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    return createTable(ident, info.columns(), info.partitions(), info.properties());
  }

  @Override
  public Table alterTable(Identifier ident, TableChange... changes) throws NoSuchTableException {
    return delta().alterTable(existing(ident), changes);
  }

  /** A managed table: dropping it deletes its data (Unity Catalog keeps it 7 days; here it is gone). */
  @Override
  public boolean dropTable(Identifier ident) {
    if (!tableExists(ident)) {
      return false;
    }
    delta().invalidateTable(byPath(tableFolder(ident)));
    deleteTree(tableFolder(ident));
    return true;
  }

  @Override
  public boolean purgeTable(Identifier ident) {
    return dropTable(ident);
  }

  @Override
  public void renameTable(Identifier oldIdent, Identifier newIdent) {
    throw new UnsupportedOperationException("The emulated Unity Catalog cannot rename tables");
  }

  // ---------------------------------------------------- staged CREATE/REPLACE ... AS SELECT (saveAsTable)

  @Override
  @SuppressWarnings("deprecation")
  public StagedTable stageCreate(Identifier ident, StructType schema, Transform[] partitions,
      Map<String, String> properties) throws TableAlreadyExistsException, NoSuchNamespaceException {
    checkAbsent(ident);
    return delta().stageCreate(creatable(ident, properties), schema, partitions, withoutLocation(properties));
  }

  @Override
  public StagedTable stageCreate(Identifier ident, Column[] columns, Transform[] partitions,
      Map<String, String> properties) throws TableAlreadyExistsException, NoSuchNamespaceException {
    checkAbsent(ident);
    return delta().stageCreate(creatable(ident, properties), columns, partitions, withoutLocation(properties));
  }

  @Override
  public StagedTable stageCreate(Identifier ident, TableInfo info)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    return stageCreate(ident, info.columns(), info.partitions(), info.properties());
  }

  @Override
  @SuppressWarnings("deprecation")
  public StagedTable stageReplace(Identifier ident, StructType schema, Transform[] partitions,
      Map<String, String> properties) throws NoSuchNamespaceException, NoSuchTableException {
    existing(ident);
    return delta().stageReplace(creatable(ident, properties), schema, partitions, withoutLocation(properties));
  }

  @Override
  public StagedTable stageReplace(Identifier ident, Column[] columns, Transform[] partitions,
      Map<String, String> properties) throws NoSuchNamespaceException, NoSuchTableException {
    existing(ident);
    return delta().stageReplace(creatable(ident, properties), columns, partitions, withoutLocation(properties));
  }

  @Override
  public StagedTable stageReplace(Identifier ident, TableInfo info)
      throws NoSuchNamespaceException, NoSuchTableException {
    return stageReplace(ident, info.columns(), info.partitions(), info.properties());
  }

  @Override
  @SuppressWarnings("deprecation")
  public StagedTable stageCreateOrReplace(Identifier ident, StructType schema, Transform[] partitions,
      Map<String, String> properties) throws NoSuchNamespaceException {
    return delta().stageCreateOrReplace(creatable(ident, properties), schema, partitions, withoutLocation(properties));
  }

  @Override
  public StagedTable stageCreateOrReplace(Identifier ident, Column[] columns, Transform[] partitions,
      Map<String, String> properties) throws NoSuchNamespaceException {
    return delta().stageCreateOrReplace(creatable(ident, properties), columns, partitions, withoutLocation(properties));
  }

  @Override
  public StagedTable stageCreateOrReplace(Identifier ident, TableInfo info) throws NoSuchNamespaceException {
    return stageCreateOrReplace(ident, info.columns(), info.partitions(), info.properties());
  }

  // ---------------------------------------------------------------------------- schemas

  @Override
  public String[][] listNamespaces() {
    return children(root).stream().map(folder -> new String[] {folder.getFileName().toString()})
        .toArray(String[][]::new);
  }

  @Override
  public String[][] listNamespaces(String[] namespace) throws NoSuchNamespaceException {
    if (namespace.length == 0) {
      return listNamespaces();
    }
    checkNamespace(namespace);
    return new String[0][];
  }

  @Override
  public boolean namespaceExists(String[] namespace) {
    return namespace.length == 1 && Files.isDirectory(schemaFolder(namespace));
  }

  @Override
  public Map<String, String> loadNamespaceMetadata(String[] namespace) throws NoSuchNamespaceException {
    checkNamespace(namespace);
    Map<String, String> metadata = new HashMap<>();
    metadata.put(SupportsNamespaces.PROP_LOCATION, schemaFolder(namespace).toUri().toString());
    return metadata;
  }

  @Override
  public void createNamespace(String[] namespace, Map<String, String> metadata)
      throws NamespaceAlreadyExistsException {
    if (namespace.length != 1) {
      throw new UnsupportedOperationException("A Unity Catalog schema has one name: " + String.join(".", namespace));
    }
    if (namespaceExists(namespace)) {
      throw new NamespaceAlreadyExistsException(withCatalog(namespace));
    }
    try {
      Files.createDirectories(schemaFolder(namespace));
    } catch (IOException error) {
      throw new UncheckedIOException(error);
    }
  }

  @Override
  public void alterNamespace(String[] namespace, NamespaceChange... changes) throws NoSuchNamespaceException {
    checkNamespace(namespace);
    throw new UnsupportedOperationException("The emulated Unity Catalog keeps no schema properties");
  }

  @Override
  public boolean dropNamespace(String[] namespace, boolean cascade)
      throws NoSuchNamespaceException, NonEmptyNamespaceException {
    checkNamespace(namespace);
    if (!cascade && !children(schemaFolder(namespace)).isEmpty()) {
      throw new NonEmptyNamespaceException(withCatalog(namespace));
    }
    deleteTree(schemaFolder(namespace));
    return true;
  }
}
