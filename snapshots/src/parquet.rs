//! Parquet files of a run (training log, analyses): encoded in memory, then written
//! atomically, so a reader never sees half a file. Only regular files are read.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use polars::prelude::{
    DataFrame, KeyValueMetadata, ParquetCompression, ParquetReader, ParquetWriter, SerReader,
};

use crate::regular_file::open_regular;
use crate::{write_atomic, RunError};

/// Encode `df` as zstd-compressed parquet and write it atomically to `path`, creating the
/// parent folder (e.g. `analysis/`) if needed.
pub fn write_parquet_atomic(path: &Path, df: &mut DataFrame) -> Result<(), RunError> {
    write_parquet_with_metadata(path, df, &BTreeMap::new())
}

/// [`write_parquet_atomic`] with file-level key-value metadata (omitted when empty).
pub(crate) fn write_parquet_with_metadata(
    path: &Path,
    df: &mut DataFrame,
    metadata: &BTreeMap<String, String>,
) -> Result<(), RunError> {
    let key_values = (!metadata.is_empty()).then(|| {
        KeyValueMetadata::from_static(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    });
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .with_key_value_metadata(key_values)
        .finish(df)
        .map_err(|source| RunError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(folder).map_err(|e| RunError::write(folder, e))?;
    }
    write_atomic(path, &bytes)
}

/// Read a parquet file; [`RunError::Io`] if it cannot be opened, [`RunError::Damaged`] if it
/// is not a regular file or does not parse.
pub fn read_parquet(path: &Path) -> Result<DataFrame, RunError> {
    read_parquet_checked(path, |_, _| Ok(()))
}

/// Read a parquet file after `check` accepted its key-value metadata and row count (read from
/// the footer, before any column is decoded).
pub(crate) fn read_parquet_checked(
    path: &Path,
    check: impl FnOnce(&BTreeMap<String, String>, usize) -> Result<(), RunError>,
) -> Result<DataFrame, RunError> {
    let (file, _) = open_regular(path).map_err(|e| e.damaged(path, "it is missing"))?;
    let unreadable = |e: polars::error::PolarsError| {
        RunError::damaged(path, format!("not a readable parquet file ({e})"))
    };
    let mut reader = ParquetReader::new(file);
    let footer = reader.get_metadata().map_err(unreadable)?;
    let metadata: BTreeMap<String, String> = footer
        .key_value_metadata
        .iter()
        .flatten()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
        .collect();
    check(&metadata, footer.num_rows)?;
    reader.finish().map_err(unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDir;
    use polars::prelude::Column;

    #[test]
    fn key_value_metadata_round_trips_and_is_seen_before_the_data() {
        let dir = TestDir::new("parquet-meta");
        let path = dir.path().join("x.parquet");
        let mut df = DataFrame::new(2, vec![Column::new("batch".into(), [0i64, 1])]).unwrap();
        let meta = BTreeMap::from([("digitlab.config_hash".to_string(), "abc".to_string())]);
        write_parquet_with_metadata(&path, &mut df, &meta).unwrap();
        let mut seen = None;
        let back = read_parquet_checked(&path, |m, rows| {
            seen = Some((m.clone(), rows));
            Ok(())
        })
        .unwrap();
        assert_eq!(back, df);
        let (m, rows) = seen.unwrap();
        assert_eq!(
            m.get("digitlab.config_hash").map(String::as_str),
            Some("abc")
        );
        assert_eq!(rows, 2);
        let err =
            read_parquet_checked(&path, |_, _| Err(RunError::damaged(&path, "no"))).unwrap_err();
        assert!(matches!(err, RunError::Damaged { .. }));
    }

    #[test]
    fn round_trip_creates_folder_and_garbage_is_damaged() {
        let dir = TestDir::new("parquet");
        let path = dir.path().join("analysis").join("x.parquet");
        let mut df = DataFrame::new(
            3,
            vec![
                Column::new("batch".into(), [0i64, 50, 100]),
                Column::new("loss".into(), [2.3f32, 0.7, 0.01]),
            ],
        )
        .unwrap();
        write_parquet_atomic(&path, &mut df).unwrap();
        assert_eq!(read_parquet(&path).unwrap(), df);

        fs::write(&path, b"PAR1 but not really").unwrap();
        match read_parquet(&path) {
            Err(RunError::Damaged { file, .. }) => assert_eq!(file, path),
            other => panic!("expected Damaged, got {other:?}"),
        }
    }
}
