//! The per-batch training log (train_log.parquet): one row per optimizer step with the loss,
//! per-digit losses, norms and logit statistics, and its mapping to a typed data frame.

use std::collections::HashSet;

use polars::prelude::{Column, DataFrame};

use crate::RunError;

/// Name of the batch column.
const BATCH: &str = "batch";
/// Name of the mean loss column.
const LOSS: &str = "loss";
/// Prefix of the per-digit loss columns; the digit index follows.
const DIGIT_LOSS: &str = "loss_digit_";
/// Name of the test loss column (modular addition only; null between evaluations).
const TEST_LOSS: &str = "test_loss";
/// A column name (or name prefix) and how to get its value.
type Field<T> = (&'static str, fn(&T) -> f32);
/// The scalar columns that follow the per-digit losses, in order.
const SCALARS: [Field<LogRow>; 5] = [
    ("grad_norm", |r| r.grad_norm),
    ("lr", |r| r.lr),
    ("logsumexp_mean", |r| r.logsumexp_mean),
    ("logsumexp_max", |r| r.logsumexp_max),
    ("saturated_fraction", |r| r.saturated_fraction),
];
/// The per-tensor columns, `{prefix}{tensor name}`, in order.
const TENSOR_STATS: [Field<TensorStats>; 3] = [
    ("grad_norm/", |s| s.grad_norm),
    ("weight_norm/", |s| s.weight_norm),
    ("update_norm/", |s| s.update_norm),
];

/// Norms of one parameter tensor at one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorStats {
    /// L2 norm of the gradient.
    pub grad_norm: f32,
    /// L2 norm of the weights after the update of this batch (the weights of the next
    /// snapshot), not the weights the loss was computed with.
    pub weight_norm: f32,
    /// L2 norm of the update applied by the optimizer.
    pub update_norm: f32,
}

/// One row of the training log: the state at one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    /// Loss etc. are computed with the weights of snapshot `batch`, i.e. before the update
    /// from this batch.
    pub batch: u64,
    /// Mean training loss over the trained digits.
    pub loss: f32,
    /// One loss per trained digit, in [`TrainLog::digits`] order.
    pub digit_loss: Vec<f32>,
    /// Global L2 norm of all gradients.
    pub grad_norm: f32,
    /// Learning rate used for the update from this batch.
    pub lr: f32,
    /// One entry per [`TrainLog::tensor_names`].
    pub tensors: Vec<TensorStats>,
    /// Mean logsumexp of the output logits at the predicting positions.
    pub logsumexp_mean: f32,
    /// Max logsumexp of the output logits at the predicting positions.
    pub logsumexp_max: f32,
    /// Fraction of predictions whose f32 softmax gives the target probability exactly 1.
    pub saturated_fraction: f32,
    /// Mean loss on the held-out test set, with the same weights as `loss`: only in logs
    /// with [`TrainLog::test_loss`], and only at the batches the test set is evaluated.
    pub test_loss: Option<f32>,
}

/// The whole training log of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainLog {
    /// The trained digits (indices `k` of `s_k`), the order of [`LogRow::digit_loss`].
    pub digits: Vec<usize>,
    /// The parameter tensors, the order of [`LogRow::tensors`].
    pub tensor_names: Vec<String>,
    /// One row per batch.
    pub rows: Vec<LogRow>,
    /// Whether the log has a `test_loss` column (tasks with a held-out test set). Addition
    /// logs have none, so their bytes are those of logs written before the column existed.
    pub test_loss: bool,
}

impl TrainLog {
    /// The log as a data frame. Columns, in this order: `batch` (Int64), `loss`,
    /// `loss_digit_{k}` for k in `digits`, `test_loss` (nullable, if [`TrainLog::test_loss`]), `grad_norm`, `lr`, `logsumexp_mean`,
    /// `logsumexp_max`, `saturated_fraction`, then for each tensor name t:
    /// `grad_norm/{t}`, `weight_norm/{t}`, `update_norm/{t}` (all Float32). `weight_norm/{t}`
    /// is the norm of the weights after this row's update (see [`TensorStats`]).
    ///
    /// Fails with [`RunError::InvalidInput`] if digits or tensor names repeat, or a row's
    /// lists do not match them in length.
    pub fn to_dataframe(&self) -> Result<DataFrame, RunError> {
        self.check()?;
        let rows = &self.rows;
        let f32_column = |name: String, get: &dyn Fn(&LogRow) -> f32| {
            Column::new(name.into(), rows.iter().map(get).collect::<Vec<f32>>())
        };
        let batch = rows
            .iter()
            .map(|r| i64::try_from(r.batch))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| invalid("a batch number does not fit in Int64".into()))?;

        let mut columns = vec![Column::new(BATCH.into(), batch)];
        columns.push(f32_column(LOSS.into(), &|r: &LogRow| r.loss));
        for (i, k) in self.digits.iter().enumerate() {
            columns.push(f32_column(format!("{DIGIT_LOSS}{k}"), &|r: &LogRow| {
                r.digit_loss[i]
            }));
        }
        if self.test_loss {
            let values: Vec<Option<f32>> = rows.iter().map(|r| r.test_loss).collect();
            columns.push(Column::new(TEST_LOSS.into(), values));
        }
        for (name, get) in SCALARS {
            columns.push(f32_column(name.into(), &get));
        }
        for (i, t) in self.tensor_names.iter().enumerate() {
            for (prefix, get) in TENSOR_STATS {
                columns.push(f32_column(format!("{prefix}{t}"), &|r: &LogRow| {
                    get(&r.tensors[i])
                }));
            }
        }
        DataFrame::new(rows.len(), columns).map_err(|e| invalid(e.to_string()))
    }

    /// Inverse of [`TrainLog::to_dataframe`]: digits and tensor names are recovered from the
    /// column names (in column order); other columns are ignored. Fails with
    /// [`RunError::Decode`] if a column is missing, has the wrong type or holds nulls.
    pub fn from_dataframe(df: &DataFrame) -> Result<TrainLog, RunError> {
        let names: Vec<&str> = df
            .get_column_names()
            .into_iter()
            .map(|n| n.as_str())
            .collect();
        let digits = names
            .iter()
            .filter_map(|n| n.strip_prefix(DIGIT_LOSS))
            .map(|k| {
                k.parse::<usize>()
                    .map_err(|_| undecodable(format!("column `{DIGIT_LOSS}{k}` names no digit")))
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let tensor_names: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_prefix(TENSOR_STATS[0].0))
            .map(str::to_string)
            .collect();

        let batch = column(df, BATCH)?
            .i64()
            .map_err(|e| undecodable(format!("column `{BATCH}`: {e}")))?
            .iter()
            .map(|b| b.and_then(|b| u64::try_from(b).ok()))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| undecodable(format!("column `{BATCH}` holds a null or negative")))?;
        let loss = f32_values(df, LOSS)?;
        let test_loss = match df.column(TEST_LOSS) {
            Ok(c) => Some(
                c.f32()
                    .map_err(|e| undecodable(format!("column `{TEST_LOSS}`: {e}")))?
                    .iter()
                    .collect::<Vec<Option<f32>>>(),
            ),
            Err(_) => None,
        };
        let digit_loss = digits
            .iter()
            .map(|k| f32_values(df, &format!("{DIGIT_LOSS}{k}")))
            .collect::<Result<Vec<_>, _>>()?;
        // In SCALARS order.
        let scalar = |i: usize| f32_values(df, SCALARS[i].0);
        let (grad_norm, lr, lse_mean, lse_max, saturated) =
            (scalar(0)?, scalar(1)?, scalar(2)?, scalar(3)?, scalar(4)?);
        let stats = tensor_names
            .iter()
            .map(|t| {
                let [g, w, u] = TENSOR_STATS.map(|(prefix, _)| format!("{prefix}{t}"));
                Ok([
                    f32_values(df, &g)?,
                    f32_values(df, &w)?,
                    f32_values(df, &u)?,
                ])
            })
            .collect::<Result<Vec<_>, RunError>>()?;

        let rows = (0..df.height())
            .map(|i| LogRow {
                batch: batch[i],
                loss: loss[i],
                digit_loss: digit_loss.iter().map(|c| c[i]).collect(),
                grad_norm: grad_norm[i],
                lr: lr[i],
                tensors: stats
                    .iter()
                    .map(|[g, w, u]| TensorStats {
                        grad_norm: g[i],
                        weight_norm: w[i],
                        update_norm: u[i],
                    })
                    .collect(),
                logsumexp_mean: lse_mean[i],
                logsumexp_max: lse_max[i],
                saturated_fraction: saturated[i],
                test_loss: test_loss.as_ref().and_then(|t| t[i]),
            })
            .collect();
        Ok(TrainLog {
            digits,
            tensor_names,
            rows,
            test_loss: test_loss.is_some(),
        })
    }

    /// Keep only the rows with batch < `batch` (the rows a resume from checkpoint `batch`
    /// will write again).
    pub fn truncate(&mut self, batch: u64) {
        self.rows.retain(|r| r.batch < batch);
    }

    /// Check that names are unique and every row matches them.
    fn check(&self) -> Result<(), RunError> {
        let unique_digits: HashSet<_> = self.digits.iter().collect();
        let unique_names: HashSet<_> = self.tensor_names.iter().collect();
        if unique_digits.len() != self.digits.len() || unique_names.len() != self.tensor_names.len()
        {
            return Err(invalid("a digit or a tensor name occurs twice".into()));
        }
        for r in &self.rows {
            if r.test_loss.is_some() && !self.test_loss {
                return Err(invalid(format!(
                    "the row of batch {} has a test loss, but the log has no test_loss column",
                    r.batch
                )));
            }
            if r.digit_loss.len() != self.digits.len() || r.tensors.len() != self.tensor_names.len()
            {
                return Err(invalid(format!(
                    "the row of batch {} has {} digit losses and {} tensor stats, expected {} \
                     and {}",
                    r.batch,
                    r.digit_loss.len(),
                    r.tensors.len(),
                    self.digits.len(),
                    self.tensor_names.len()
                )));
            }
        }
        Ok(())
    }
}

/// The column `name`, or a decode error saying it is missing.
fn column<'a>(df: &'a DataFrame, name: &str) -> Result<&'a Column, RunError> {
    df.column(name)
        .map_err(|_| undecodable(format!("column `{name}` is missing")))
}

/// The values of the Float32 column `name`, which must have no nulls.
fn f32_values(df: &DataFrame, name: &str) -> Result<Vec<f32>, RunError> {
    column(df, name)?
        .f32()
        .map_err(|e| undecodable(format!("column `{name}`: {e}")))?
        .iter()
        .collect::<Option<Vec<f32>>>()
        .ok_or_else(|| undecodable(format!("column `{name}` holds a null")))
}

/// An [`RunError::InvalidInput`] about the training log.
fn invalid(reason: String) -> RunError {
    RunError::InvalidInput {
        what: "the training log".into(),
        reason,
    }
}

/// A [`RunError::Decode`] about the training log.
fn undecodable(reason: String) -> RunError {
    RunError::Decode {
        what: "the training log",
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample_log;

    #[test]
    fn columns_are_named_typed_and_ordered() {
        let df = sample_log().to_dataframe().unwrap();
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "batch",
                "loss",
                "loss_digit_0",
                "loss_digit_5",
                "grad_norm",
                "lr",
                "logsumexp_mean",
                "logsumexp_max",
                "saturated_fraction",
                "grad_norm/embed.W_E",
                "weight_norm/embed.W_E",
                "update_norm/embed.W_E",
                "grad_norm/blocks.0.mlp.W_in",
                "weight_norm/blocks.0.mlp.W_in",
                "update_norm/blocks.0.mlp.W_in",
            ]
        );
        assert!(df.column("batch").unwrap().i64().is_ok());
        assert!(df.column("update_norm/embed.W_E").unwrap().f32().is_ok());
        assert_eq!(df.height(), 3);
    }

    #[test]
    fn data_frame_round_trip() {
        let log = sample_log();
        let back = TrainLog::from_dataframe(&log.to_dataframe().unwrap()).unwrap();
        assert_eq!(back, log);
        let empty = TrainLog::default();
        assert_eq!(
            TrainLog::from_dataframe(&empty.to_dataframe().unwrap()).unwrap(),
            empty
        );
    }

    #[test]
    fn test_loss_column_is_nullable_placed_after_the_digit_losses_and_round_trips() {
        let mut log = sample_log();
        log.test_loss = true;
        log.rows[0].test_loss = Some(4.7);
        log.rows[2].test_loss = Some(0.25);
        let df = log.to_dataframe().unwrap();
        let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
        assert_eq!(names[2..5], ["loss_digit_0", "loss_digit_5", "test_loss"]);
        assert_eq!(df.column("test_loss").unwrap().null_count(), 1);
        assert_eq!(TrainLog::from_dataframe(&df).unwrap(), log);
        // A test loss in a log without the column is refused, not dropped.
        log.test_loss = false;
        assert!(matches!(
            log.to_dataframe(),
            Err(RunError::InvalidInput { .. })
        ));
    }

    #[test]
    fn missing_column_and_mismatched_rows_are_errors() {
        let mut df = sample_log().to_dataframe().unwrap();
        df.drop_in_place("lr").unwrap();
        let err = TrainLog::from_dataframe(&df).unwrap_err();
        assert!(err.to_string().contains("`lr` is missing"), "{err}");

        let mut log = sample_log();
        log.rows[1].tensors.pop();
        assert!(matches!(
            log.to_dataframe(),
            Err(RunError::InvalidInput { .. })
        ));
    }

    #[test]
    fn truncate_keeps_rows_before_the_batch() {
        let mut log = sample_log();
        log.truncate(2);
        assert_eq!(log.rows.iter().map(|r| r.batch).collect::<Vec<_>>(), [0, 1]);
        log.truncate(0);
        assert!(log.rows.is_empty());
    }
}
