//! Which code computed a run's training steps, as recorded in its `config.json`.
//!
//! Two machines (or two step implementations) produce the same trajectory up to the last bits
//! only when they run the same kernel: the fused step and candle's graph sum in different
//! orders, and the `gemm` crate's AVX-512 and AVX2/FMA micro-kernels block their sums
//! differently. `gemm` picks its micro-kernel at run time from the CPU (AVX-512 when the CPU
//! has it, else FMA, else scalar; NEON on ARM), so the record names both the step and the
//! instruction set, e.g. `fused-avx512` or `candle-fma`.

use std::fmt;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;

/// The step implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// candle's autograd over the model (any layout, any depth).
    Candle,
    /// The hand-written forward and backward of [`crate::fused`] (one layer, either layout).
    Fused,
    /// [`StepKind::Fused`] with the attention output taken through the table rows' OV
    /// products (each value-table row times `W_O`), not through `z` at every query row: the
    /// same function summed in another order. New runs get it where it takes at most half the
    /// multiply-adds ([`crate::fused::output_tables_are_cheaper`]: `d_head` much larger than
    /// the table has rows, as at d_model 512 with one head).
    FusedOv,
}

impl StepKind {
    /// Whether this is one of the fused steps.
    pub fn is_fused(self) -> bool {
        matches!(self, StepKind::Fused | StepKind::FusedOv)
    }
}

/// The matrix-product micro-kernel `gemm` runs on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Simd {
    Avx512,
    Fma,
    Neon,
    Scalar,
}

/// A step implementation on an instruction set: what `config.json` records as `"kernel"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Kernel {
    pub step: StepKind,
    pub simd: Simd,
}

impl Simd {
    /// What `gemm` chooses here, by the same tests in the same order (its `init_gemm_fn`;
    /// AVX-512 needs `gemm`'s `x86-v4` feature, which this crate enables).
    pub fn of_this_cpu() -> Simd {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                Simd::Avx512
            } else if std::arch::is_x86_feature_detected!("fma") {
                Simd::Fma
            } else {
                Simd::Scalar
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                Simd::Neon
            } else {
                Simd::Scalar
            }
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Simd::Scalar
        }
    }

    fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Fma => "fma",
            Simd::Neon => "neon",
            Simd::Scalar => "scalar",
        }
    }
}

impl Kernel {
    /// What runs written before kernels were recorded used: candle, and `gemm` without its
    /// AVX-512 kernels (they were not compiled in), so FMA on any x86 machine of that time.
    pub const UNRECORDED: Kernel = Kernel {
        step: StepKind::Candle,
        simd: Simd::Fma,
    };

    /// `step` on this machine's instruction set.
    pub fn here(step: StepKind) -> Kernel {
        Kernel {
            step,
            simd: Simd::of_this_cpu(),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            StepKind::Candle => "candle",
            StepKind::Fused => "fused",
            StepKind::FusedOv => "fusedov",
        };
        write!(f, "{step}-{}", self.simd.name())
    }
}

impl From<Kernel> for String {
    fn from(k: Kernel) -> String {
        k.to_string()
    }
}

impl TryFrom<String> for Kernel {
    type Error = anyhow::Error;

    fn try_from(text: String) -> Result<Kernel> {
        let Some((step, simd)) = text.split_once('-') else {
            bail!("unknown kernel `{text}`: expected STEP-SIMD, e.g. fused-avx512 or candle-fma");
        };
        let step = match step {
            "candle" => StepKind::Candle,
            "fused" => StepKind::Fused,
            "fusedov" => StepKind::FusedOv,
            _ => bail!("unknown kernel `{text}`: the step is `candle`, `fused` or `fusedov`"),
        };
        let simd = [Simd::Avx512, Simd::Fma, Simd::Neon, Simd::Scalar]
            .into_iter()
            .find(|s| s.name() == simd);
        let Some(simd) = simd else {
            bail!("unknown kernel `{text}`: the instruction set is avx512, fma, neon or scalar");
        };
        Ok(Kernel { step, simd })
    }
}

impl TrainConfig {
    /// Whether the fused step can compute this config (the token and position tables are exact
    /// only for a one-layer model, where attention reads the embeddings).
    pub fn fused_step_applies(&self) -> bool {
        self.model.n_layers == 1
    }

    /// Refuses a recorded fused kernel on a config the fused step cannot compute (a
    /// hand-edited `config.json`).
    pub fn check_kernel(&self) -> Result<()> {
        match self.kernel {
            Some(k) if k.step.is_fused() && !self.fused_step_applies() => bail!(
                "config.json names kernel {k}, but the fused step needs a one-layer model: set \"kernel\" to candle-{} or remove it",
                k.simd.name()
            ),
            _ => Ok(()),
        }
    }

    /// The kernel this machine trains this config with: the step a recorded kernel names (so a
    /// resumed run keeps its step implementation, and a replay its sums), else the fused step
    /// where it applies, with the OV products where they are cheaper; and always this CPU's
    /// instruction set.
    pub fn training_kernel(&self) -> Kernel {
        let step = match self.kernel {
            Some(k) if k.step == StepKind::Candle => StepKind::Candle,
            _ if !self.fused_step_applies() => StepKind::Candle,
            Some(k) => k.step,
            None if crate::fused::output_tables_are_cheaper(self) => StepKind::FusedOv,
            None => StepKind::Fused,
        };
        Kernel::here(step)
    }

    /// The kernel the run was trained with ([`Kernel::UNRECORDED`] for runs older than the
    /// record).
    pub fn recorded_kernel(&self) -> Kernel {
        self.kernel.unwrap_or(Kernel::UNRECORDED)
    }

    /// Whether replaying this run here reproduces its bits: the same kernel as recorded.
    pub fn replays_exactly_here(&self) -> bool {
        self.recorded_kernel() == self.training_kernel()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_round_trip_and_bad_names_are_refused() {
        for step in [StepKind::Candle, StepKind::Fused, StepKind::FusedOv] {
            for simd in [Simd::Avx512, Simd::Fma, Simd::Neon, Simd::Scalar] {
                let k = Kernel { step, simd };
                assert_eq!(Kernel::try_from(k.to_string()).unwrap(), k);
            }
        }
        assert_eq!(
            Kernel::try_from("fused-avx512".to_string()).unwrap(),
            Kernel {
                step: StepKind::Fused,
                simd: Simd::Avx512
            }
        );
        for bad in ["fused", "torch-fma", "fused-sse9", "fusedqk-fma", ""] {
            assert!(Kernel::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
