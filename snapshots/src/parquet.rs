//! Parquet files of a run (training log, analyses): encoded in memory, then written
//! atomically, so a reader never sees half a file.

use std::fs::{self, File};
use std::path::Path;

use polars::prelude::{DataFrame, ParquetCompression, ParquetReader, ParquetWriter, SerReader};

use crate::{write_atomic, RunError};

/// Encode `df` as zstd-compressed parquet and write it atomically to `path`, creating the
/// parent folder (e.g. `analysis/`) if needed.
pub fn write_parquet_atomic(path: &Path, df: &mut DataFrame) -> Result<(), RunError> {
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(df)
        .map_err(|source| RunError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(folder).map_err(|e| RunError::io(folder, e))?;
    }
    write_atomic(path, &bytes)
}

/// Read a parquet file; [`RunError::Io`] if it cannot be opened, [`RunError::Damaged`] if it
/// does not parse.
pub fn read_parquet(path: &Path) -> Result<DataFrame, RunError> {
    let file = File::open(path).map_err(|e| RunError::io(path, e))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| RunError::damaged(path, format!("not a readable parquet file ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDir;
    use polars::prelude::Column;

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
