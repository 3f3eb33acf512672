//! The DataFusion session a preprocess stage runs in: DataFusion in this process, or a
//! client of a Ballista scheduler (checked reachable first), with kiln's functions
//! (`kiln_split`, `kiln_predict`) registered and the source files registered as the
//! table `source`.

use crate::Error;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use kiln_preprocess::{ColumnType, Config, Engine, Source};
use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

/// How long kiln waits for a scheduler to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `host:port` of a `df://host:port` address.
pub fn scheduler_addr(url: &str) -> Result<String, Error> {
    let rest = url.strip_prefix("df://").ok_or_else(|| {
        Error::Config(format!(
            "scheduler: `{url}` is not a scheduler address; write it as df://host:port"
        ))
    })?;
    let host_port = rest.trim_end_matches('/');
    Ok(if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:50050")
    })
}

/// Errors unless something accepts connections at the scheduler's address.
pub fn check_reachable(url: &str) -> Result<(), Error> {
    let addr = scheduler_addr(url)?;
    let unreachable = |why: String| Error::Unreachable {
        url: url.to_string(),
        why,
    };
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last = String::from("the name resolves to no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(unreachable(last))
}

/// kiln's scalar functions, which every session and every executor registers.
pub fn functions() -> Vec<datafusion::logical_expr::ScalarUDF> {
    vec![crate::udf::udf(), crate::predict_udf::udf()]
}

/// A session on `engine` (for Ballista, a client of `scheduler`) with kiln's functions
/// registered. In this process, DataFusion's operators that can spill (the sorts, the
/// aggregations) hold at most `memory_mb` MiB and spill to the temporary folder past
/// it; a cluster's executors have their own budget (`kiln-executor --memory-mb`).
pub async fn context(
    engine: Engine,
    scheduler: Option<&str>,
    memory_mb: u64,
) -> Result<SessionContext, Error> {
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ctx = match engine {
        Engine::Ballista => {
            let url = scheduler.unwrap_or_default();
            check_reachable(url)?;
            use ballista::prelude::{SessionConfigExt, SessionContextExt};
            let state = SessionStateBuilder::new()
                .with_config(SessionConfig::new_with_ballista().with_target_partitions(partitions))
                .with_default_features()
                .build();
            SessionContext::remote_with_state(url, state)
                .await
                .map_err(|e| Error::Unreachable {
                    url: url.to_string(),
                    why: e.to_string(),
                })?
        }
        Engine::Datafusion | Engine::Local => {
            let bytes = usize::try_from(memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
            let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                .with_memory_limit(bytes, 1.0)
                .build_arc()
                .map_err(|e| Error::Engine(e.to_string()))?;
            SessionContext::new_with_config_rt(
                SessionConfig::new().with_target_partitions(partitions),
                runtime,
            )
        }
    };
    for f in functions() {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

/// The source files as DataFusion reads them: a URL string each.
fn urls(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            std::path::absolute(f)
                .unwrap_or_else(|_| f.clone())
                .display()
                .to_string()
        })
        .collect()
}

/// How a table's files are read.
#[derive(Debug, Clone)]
pub struct Table<'a> {
    /// The format, and a CSV's delimiter, header and null strings.
    pub source: &'a Source,
    /// Columns read as text or as numbers whatever their inferred type.
    pub column_types: &'a BTreeMap<String, ColumnType>,
    /// Columns read with the type the engine infers (the target, the row id).
    pub keep: Vec<&'a str>,
}

impl<'a> Table<'a> {
    /// The source of a preprocess stage.
    pub fn of(config: &'a Config) -> Table<'a> {
        let mut keep = vec![config.target.as_str()];
        keep.extend(config.split.row_id.as_deref());
        Table {
            source: &config.source,
            column_types: &config.column_types,
            keep,
        }
    }
}

/// Registers `files` as the table `source` (CSV with the table's delimiter and null
/// strings, or Parquet) and returns its schema as inferred (a CSV's number columns are
/// read as f64 whatever their inferred type).
pub async fn register_source(
    ctx: &SessionContext,
    table: &Table<'_>,
    files: &[PathBuf],
) -> Result<SchemaRef, Error> {
    let paths = urls(files);
    let df = match table.source {
        Source::Csv {
            delimiter,
            null_values,
            has_header,
            ..
        } => {
            let mut nulls: Vec<String> = vec![String::new(), "NA".into()];
            nulls.extend(null_values.iter().cloned());
            let regex = format!(
                "^({})$",
                nulls
                    .iter()
                    .map(|n| regex_escape(n))
                    .collect::<Vec<_>>()
                    .join("|")
            );
            let extension = files
                .first()
                .and_then(|f| f.extension())
                .and_then(|e| e.to_str())
                .map(|e| format!(".{e}"))
                .unwrap_or_else(|| ".csv".into());
            let mut opts = CsvReadOptions::new()
                .has_header(*has_header)
                .delimiter(*delimiter as u8)
                .file_extension(&extension)
                .schema_infer_max_records(10_000);
            opts = opts.null_regex(Some(regex));
            // the types inferred from the first rows, but the feature columns of numbers
            // read as f64 (a later 1.5 in a column of integers is a number, as locally)
            // and `column_types` text columns as text (a zip code keeps its zeros)
            let inferred = ctx
                .read_csv(paths.clone(), opts.clone())
                .await
                .map_err(|e| Error::Source {
                    source_name: files.first().map(|f| f.display().to_string()).unwrap_or_default(),
                    why: e.to_string(),
                })?;
            let fields: Vec<Field> = inferred
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    let name = f.name().as_str();
                    let keep = table.keep.contains(&name);
                    let t = match table.column_types.get(name) {
                        _ if keep => f.data_type().clone(),
                        Some(ColumnType::Text) => DataType::Utf8,
                        Some(ColumnType::Number) => DataType::Float64,
                        None if f.data_type().is_numeric() => DataType::Float64,
                        None => f.data_type().clone(),
                    };
                    Field::new(name, t, true)
                })
                .collect();
            let schema = Schema::new(fields);
            let read = ctx.read_csv(paths, opts.schema(&schema)).await;
            // the types as inferred, which profile.json names (the local engine's)
            return match read {
                Ok(df) => {
                    ctx.register_table("source", df.into_view())
                        .map_err(|e| Error::Engine(e.to_string()))?;
                    Ok(inferred.schema().inner().clone())
                }
                Err(e) => Err(Error::Source {
                    source_name: files.first().map(|f| f.display().to_string()).unwrap_or_default(),
                    why: e.to_string(),
                }),
            };
        }
        Source::Parquet { .. } => ctx.read_parquet(paths, ParquetReadOptions::default()).await,
        other => {
            return Err(Error::Config(format!(
                "source: {} sources run on engine = \"local\" only; DataFusion reads CSV and Parquet",
                other.format()
            )));
        }
    }
    .map_err(|e| Error::Source {
        source_name: files.first().map(|f| f.display().to_string()).unwrap_or_default(),
        why: e.to_string(),
    })?;
    let schema: SchemaRef = df.schema().inner().clone();
    ctx.register_table("source", df.into_view())
        .map_err(|e| Error::Engine(e.to_string()))?;
    Ok(schema)
}

/// `s` with the regex metacharacters escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
