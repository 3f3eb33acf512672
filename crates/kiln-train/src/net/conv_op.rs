//! The CPU's convolution (product, bias and ReLU) and max pool as tape ops. Image by
//! image, the image's windows (its im2col rows) are gathered into a buffer that stays in
//! cache and multiplied by the weight with gemm's AVX-512 kernels. The way back gathers them again, adds
//! `windowsᵀ · dY` into dW and scatters `dY · Wᵀ` back onto the input, so neither the
//! whole batch's window matrix nor its gradient is ever stored (9 times the activations
//! for 3 x 3 kernels, and as large again). dfdx's `gather` + `matmul` compute the same
//! products (summed in another order) and are what other devices run.

use super::Traced;
use super::scratch::Scratch;
use dfdx::prelude::*;
use gemm::{Layout, sgemm};
use std::sync::Arc;

/// What a convolution product needs besides its input and weight: each output
/// position's window as flat input indices (`idx`, image by image, `positions · width`
/// each; an index past the input's end reads 0, the padding), the number of images, and
/// whether the input needs a gradient (the data, a first step's input, does not).
pub(super) struct Windows {
    pub idx: Arc<Vec<usize>>,
    pub images: usize,
    pub width: usize,
    pub input_grad: bool,
}

impl Windows {
    /// Window rows per image.
    fn positions(&self) -> usize {
        self.idx.len() / (self.images * self.width).max(1)
    }

    /// Image `img`'s windows, read from `src`, into `cols` (`positions × width`).
    fn gather(&self, img: usize, src: &[f32], cols: &mut [f32]) {
        let per = self.positions() * self.width;
        let end = src.len();
        for (v, &i) in cols.iter_mut().zip(&self.idx[img * per..(img + 1) * per]) {
            *v = if i < end { src[i] } else { 0.0 };
        }
    }
}

/// `windows(h) · w + b`, through a ReLU when `relu`: `[images · positions, w's
/// columns]` on `h`'s tape, with the gradients of `h` (when asked), `w` and `b`.
pub(super) fn conv_product(
    h: Traced<Cpu>,
    win: Windows,
    w: &Tensor<(usize, usize), f32, Cpu>,
    b: &Tensor<(usize,), f32, Cpu>,
    relu: bool,
) -> Traced<Cpu> {
    let (inp, mut tape) = h.split_tape();
    let dev = inp.device().clone();
    let src = Scratch::copy_of(&inp);
    let weight = Scratch::copy_of(w);
    let bias = Scratch::copy_of(b);
    let (k, n) = *w.shape();
    let p = win.positions();
    let rows = win.images * p;
    let mut values = match Storage::<f32>::try_alloc_len(&dev, rows * n) {
        Ok(mut buf) => std::mem::take(&mut *buf),
        Err(_) => vec![0.0; rows * n],
    };
    let mut cols = Scratch::zeroed(p * k);
    for img in 0..win.images {
        win.gather(img, &src, &mut cols);
        let out = &mut values[img * p * n..(img + 1) * p * n];
        for row in out.chunks_exact_mut(n) {
            row.copy_from_slice(&bias);
        }
        sgemm(
            (p, n, k),
            out,
            true,
            &cols,
            Layout::RowMajor,
            &weight,
            Layout::RowMajor,
        );
        if relu {
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
    // the activations, for the ReLU's gradient
    let mut kept = Scratch::zeroed(if relu { values.len() } else { 0 });
    kept.copy_from_slice(if relu { &values } else { &[] });
    let out = dev.tensor_from_vec(values, (rows, n));
    let (out_key, w_key, b_key) = (out.clone(), w.clone(), b.clone());
    tape.add_backward_op(move |grads| {
        // the output's gradient is complete (its one reader's backward ran): taken
        let mut d_out = std::mem::take(&mut **grads.get_or_alloc_mut(&out_key)?);
        if relu {
            // a ReLU passes the gradient where it passed the value (z > 0), as dfdx's does
            for (d, &y) in d_out.iter_mut().zip(kept.iter()) {
                if y <= 0.0 {
                    *d = 0.0;
                }
            }
        }
        let mut dw = std::mem::take(&mut **grads.get_or_alloc_mut(&w_key)?);
        let db = grads.get_or_alloc_mut(&b_key)?;
        for row in d_out.chunks_exact(n) {
            for (a, &g) in db.iter_mut().zip(row) {
                *a += g;
            }
        }
        let mut d_cols = Scratch::zeroed(if win.input_grad { p * k } else { 0 });
        for img in 0..win.images {
            win.gather(img, &src, &mut cols);
            let dy = &d_out[img * p * n..(img + 1) * p * n];
            sgemm(
                (k, n, p),
                &mut dw,
                true,
                &cols,
                Layout::Transposed,
                dy,
                Layout::RowMajor,
            );
            if win.input_grad {
                sgemm(
                    (p, k, n),
                    &mut d_cols,
                    false,
                    dy,
                    Layout::RowMajor,
                    &weight,
                    Layout::Transposed,
                );
                let d_inp = grads.get_or_alloc_mut(&inp)?;
                let end = d_inp.len();
                let per = p * k;
                for (&i, &g) in win.idx[img * per..(img + 1) * per]
                    .iter()
                    .zip(d_cols.iter())
                {
                    if i < end {
                        d_inp[i] += g;
                    }
                }
            }
        }
        **grads.get_or_alloc_mut(&w_key)? = dw;
        Ok(())
    });
    out.put_tape(tape)
}

/// The maximum of each window of `h` (`idx`: `rows · width` flat indices, an index past
/// the input's end reading 0) as a `[rows / channels, channels]` matrix on `h`'s tape.
/// The way back gives each window's gradient to every value equal to its maximum, as
/// dfdx's `max` does, so the weights are those of dfdx's `gather` + `max`, bit for bit.
pub(super) fn max_pool(
    h: Traced<Cpu>,
    idx: Arc<Vec<usize>>,
    width: usize,
    channels: usize,
) -> Traced<Cpu> {
    let (inp, mut tape) = h.split_tape();
    let dev = inp.device().clone();
    let src = Scratch::copy_of(&inp);
    let rows = idx.len() / width.max(1);
    let read = |i: usize| src.get(i).copied().unwrap_or(0.0);
    let mut maxes = Scratch::zeroed(rows);
    for (m, window) in maxes.iter_mut().zip(idx.chunks_exact(width)) {
        *m = window
            .iter()
            .map(|&i| read(i))
            .fold(f32::NEG_INFINITY, f32::max);
    }
    let out = dev.tensor_from_vec(maxes.to_vec(), (rows / channels.max(1), channels));
    let out_key = out.clone();
    tape.add_backward_op(move |grads| {
        let d_out = std::mem::take(&mut **grads.get_or_alloc_mut(&out_key)?);
        let d_inp = grads.get_or_alloc_mut(&inp)?;
        for ((window, &max), &g) in idx.chunks_exact(width).zip(maxes.iter()).zip(&d_out) {
            for &i in window {
                // without a branch: adds 0 where the value is not the maximum, as dfdx's
                // `max` backward does
                if let (Some(d), Some(&v)) = (d_inp.get_mut(i), src.get(i)) {
                    *d += if v == max { g } else { 0.0 };
                }
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}
