//! Timing candidates in ONNX Runtime at batch 1 and 1024, and why a chosen candidate can
//! be slower than fp32. The timings never decide the choice.

use crate::{Candidate, Latency, Result, Timings};
use kiln_core::{Dataset, NativeModel, Predictor};

/// File of the measured latencies (not hashed into the stage's content: timings vary).
pub const LATENCY_FILE: &str = <Timings as kiln_core::Artifact>::FILE;

/// Times every built candidate (fp32 first, in the order of `candidates`), with its
/// speed-up at batch 1024 over fp32, and for a chosen candidate that is slower, why.
pub(crate) fn measure(
    built: &[(NativeModel, Vec<u8>)],
    candidates: &[Candidate],
    valid: &Dataset,
) -> Result<Vec<Latency>> {
    let _span = tracing::info_span!("latency").entered();
    let mut lat = Vec::new();
    let mut fp32_1024 = f64::NAN;
    for (i, ((m, bytes), c)) in built.iter().zip(candidates).enumerate() {
        let (b1, b1024) = latency(bytes, valid)?;
        if i == 0 {
            fp32_1024 = b1024;
        }
        let speedup = fp32_1024 / b1024;
        lat.push(Latency {
            name: c.name.clone(),
            batch1_ms: b1,
            batch1024_ms: b1024,
            speedup_1024: speedup,
            slower_than_fp32: (c.chosen && speedup < 1.0).then(|| slower_reason(m)),
        });
    }
    Ok(lat)
}

/// Median milliseconds of ONNX Runtime (one thread) on the first row and on 1024 rows
/// (the validation rows repeated).
fn latency(bytes: &[u8], valid: &Dataset) -> Result<(f64, f64)> {
    let mut ort = kiln_deploy::OrtModel::from_bytes(bytes, 1)?;
    let w = valid.n_features();
    let rows: Vec<f32> = valid
        .features
        .chunks_exact(w)
        .cycle()
        .take(1024)
        .flatten()
        .copied()
        .collect();
    let mut time = |x: &[f32], n: usize, reps: usize| -> Result<f64> {
        ort.predict(x, n)?; // warm-up
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let s = std::time::Instant::now();
                ort.predict(x, n).map(|_| s.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<Result<_, _>>()?;
        t.sort_by(f64::total_cmp);
        Ok(t[reps / 2])
    };
    Ok((time(&rows[..w], 1, 201)?, time(&rows, 1024, 15)?))
}

/// Why a compressed model can be slower than fp32 in ONNX Runtime.
fn slower_reason(c: &NativeModel) -> String {
    match (&c.spec.quantization, &c.spec.pruning) {
        (None, Some(p)) if p.kind == kiln_core::PruningKind::Magnitude => {
            "zeros are stored and multiplied like any weight: ONNX Runtime has no sparse MatMul kernel; use structured pruning for speed".into()
        }
        (Some(q), _) if q.scheme == kiln_core::Scheme::Static => {
            "QuantizeLinear + MatMulInteger + rescaling costs more than an fp32 GEMM of this size".into()
        }
        (Some(_), _) => {
            "the quantize/dequantize steps cost more than the int8 GEMM saves at this size".into()
        }
        _ => "measured slower on this machine (timings are noisy; see latency.timings.json)".into(),
    }
}
