//! The CPU's window gather as one tape op: each output value is the input value at its
//! index (an index past the input's end reads 0: the padding), and the backward adds each
//! output gradient back at its index. dfdx's `gather` computes the same, in the same
//! order, through its generic strided kernel, after a `concat_along` that appends the
//! padding zero to the whole activation; on the MNIST CNN the two took 47 % of a
//! training step at one thread (docs/benchmarks.md).

use super::Traced;
use super::scratch::Scratch;
use dfdx::prelude::*;
use std::sync::Arc;

/// The values of `h` (read flat, row-major) at `idx`, as a `[rows, cols]` matrix on
/// `h`'s tape; an index of `h`'s length or more reads 0 and takes no gradient.
pub(super) fn gather_flat(
    h: Traced<Cpu>,
    idx: Arc<Vec<usize>>,
    rows: usize,
    cols: usize,
) -> Traced<Cpu> {
    let (inp, mut tape) = h.split_tape();
    let dev = inp.device().clone();
    let src = Scratch::copy_of(&inp);
    let end = src.len();
    // the output's buffer from dfdx's allocation cache (a fresh one each batch costs page
    // faults), moved out of its cache wrapper into the tensor, which returns it there
    let mut values = match Storage::<f32>::try_alloc_len(&dev, idx.len()) {
        Ok(mut buf) => std::mem::take(&mut *buf),
        Err(_) => vec![0.0; idx.len()],
    };
    for (v, &i) in values.iter_mut().zip(idx.iter()) {
        *v = if i < end { src[i] } else { 0.0 };
    }
    drop(src);
    let out = dev.tensor_from_vec(values, (rows, cols));
    let out_key = out.clone();
    tape.add_backward_op(move |grads| {
        // the output's gradient is complete (its one reader's backward ran) and read
        // once more, here: taken, not copied
        let d_out = std::mem::take(&mut **grads.get_or_alloc_mut(&out_key)?);
        let d_inp = grads.get_or_alloc_mut(&inp)?;
        for (&i, &g) in idx.iter().zip(&d_out) {
            if i < end {
                d_inp[i] += g;
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}
