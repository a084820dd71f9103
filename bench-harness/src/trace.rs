//! Key traces for replay: the ARC paper's `.lis` format (zstd-compressed or plain), one
//! key per line, and CSV with a key column. Keys come out as `u64`s (lines and CSV
//! values are hashed when they are not numbers) so every policy sees identical keys.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// `start_block num_blocks ignore request_no`: `num_blocks` requests from `start_block`.
    Lis,
    /// One key per line.
    Keys,
    /// Comma-separated, with a header row; the key is the named column.
    Csv { column: String },
}

impl Format {
    /// `.lis` / `.lis.zst` are ARC traces, `.csv` CSV (column `key` unless told), else keys.
    pub fn guess(path: &Path, csv_column: Option<&str>) -> Format {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let name = name.strip_suffix(".zst").unwrap_or(name);
        if name.ends_with(".lis") {
            Format::Lis
        } else if name.ends_with(".csv") || csv_column.is_some() {
            Format::Csv {
                column: csv_column.unwrap_or("key").to_owned(),
            }
        } else {
            Format::Keys
        }
    }
}

/// Opens `path`, decompressing zstd when the name ends in `.zst`.
pub fn open(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(
            ruzstd::StreamingDecoder::new(file)
                .with_context(|| format!("{} is not zstd", path.display()))?,
        )
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
}

fn key_of(text: &str) -> u64 {
    text.parse::<u64>().unwrap_or_else(|_| {
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    })
}

/// Reads the whole trace as keys (at most `limit`).
pub fn read(
    reader: impl BufRead,
    format: &Format,
    limit: Option<usize>,
) -> anyhow::Result<Vec<u64>> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut keys = Vec::new();
    let mut column = None;
    for (n, line) in reader.lines().enumerate() {
        if keys.len() >= limit {
            break;
        }
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match format {
            Format::Lis => {
                let mut fields = line.split_whitespace();
                let parse = |f: Option<&str>, what: &str| -> anyhow::Result<u64> {
                    f.and_then(|v| v.parse().ok())
                        .with_context(|| format!("line {}: bad {what} in {line:?}", n + 1))
                };
                let start = parse(fields.next(), "start block")?;
                let count = parse(fields.next(), "block count")?;
                for block in start..start.saturating_add(count) {
                    if keys.len() >= limit {
                        break;
                    }
                    keys.push(block);
                }
            }
            Format::Keys => keys.push(key_of(line)),
            Format::Csv { column: name } => {
                let fields: Vec<&str> = line.split(',').map(str::trim).collect();
                match column {
                    None => {
                        column =
                            Some(fields.iter().position(|f| f == name).with_context(|| {
                                format!("CSV header {line:?} has no column {name:?}")
                            })?);
                    }
                    Some(i) => match fields.get(i) {
                        Some(v) => keys.push(key_of(v)),
                        None => bail!("line {}: no column {i} in {line:?}", n + 1),
                    },
                }
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lis_lines_expand_into_block_requests() {
        let trace = "100 3 0 1\n7 1 0 2\n\n100 2 0 3\n";
        assert_eq!(
            read(trace.as_bytes(), &Format::Lis, None).unwrap(),
            vec![100, 101, 102, 7, 100, 101]
        );
        assert_eq!(
            read(trace.as_bytes(), &Format::Lis, Some(4)).unwrap(),
            vec![100, 101, 102, 7]
        );
        assert!(read("x 1 0 1\n".as_bytes(), &Format::Lis, None).is_err());
    }

    #[test]
    fn keys_and_csv_columns() {
        let keys = read("a\nb\na\n42\n".as_bytes(), &Format::Keys, None).unwrap();
        assert_eq!(keys[0], keys[2]);
        assert_ne!(keys[0], keys[1]);
        assert_eq!(keys[3], 42);
        let csv = "time,key,size\n1,user:1,10\n2,user:2,10\n3,user:1,10\n";
        let keys = read(
            csv.as_bytes(),
            &Format::Csv {
                column: "key".into(),
            },
            None,
        )
        .unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0], keys[2]);
        assert!(read(
            csv.as_bytes(),
            &Format::Csv {
                column: "nope".into()
            },
            None
        )
        .is_err());
    }

    #[test]
    fn formats_are_guessed_from_names() {
        assert_eq!(Format::guess(Path::new("OLTP.lis.zst"), None), Format::Lis);
        assert_eq!(
            Format::guess(Path::new("t.csv"), None),
            Format::Csv {
                column: "key".into()
            }
        );
        assert_eq!(Format::guess(Path::new("t.txt"), None), Format::Keys);
    }

    /// The shared OLTP trace, when the checkout sits beside `shared/`: decodes, and
    /// expands to the request count its README gives.
    #[test]
    fn the_shared_oltp_trace_reads_whole() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/OLTP.lis.zst");
        if !path.exists() {
            eprintln!("skipped: {} is not here", path.display());
            return;
        }
        let keys = read(open(&path).unwrap(), &Format::Lis, None).unwrap();
        assert_eq!(keys.len(), 914_145);
    }
}
