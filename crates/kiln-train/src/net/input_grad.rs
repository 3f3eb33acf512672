//! The CPU's input-layer product as a tape op whose backward computes only the weight's
//! gradient `dW = xᵀ · dZ` (the data needs none).

use super::{Matrix, Traced};
use dfdx::prelude::*;

/// `x · w` on a fresh tape. Only `dW = xᵀ · dZ` on the way back: the data needs no
/// gradient, and dfdx's matmul would also compute `dX = dZ · wᵀ`, as much work as the
/// forward product (for 784-128-64-10 about 30 % of a training step).
pub(super) fn input_matmul(x: Matrix<Cpu>, w: &Matrix<Cpu>) -> Traced<Cpu> {
    let z = x.clone().matmul(w.clone());
    let (z_key, w_key) = (z.clone(), w.clone());
    let mut tape = OwnedTape::<f32, Cpu>::default();
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&z_key)?;
        let dz = grads.get(&z_key);
        let dw = x.permute::<(usize, usize), Axes2<1, 0>>().try_matmul(dz)?;
        // `w` takes part in this tape through this product only (the tape starts
        // here, and the first layer's weight is used nowhere else), so its gradient
        // is exactly dW: copied in, not added (dfdx's element-wise `as_vec` costs as
        // much as the product itself)
        dw.copy_into(grads.get_or_alloc_mut(&w_key)?);
        Ok(())
    });
    z.put_tape(tape)
}
