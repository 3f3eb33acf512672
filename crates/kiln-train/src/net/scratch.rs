//! Host buffers the CPU's tape ops reuse: copies of their inputs and window matrices,
//! kept per thread and handed back when dropped. A fresh buffer of a megabyte or more
//! costs page faults and the kernel's zeroing of every page (13 % of a CNN training step
//! at one thread before these buffers were reused), and dfdx's own buffer cache cannot
//! be shared by the two half-batch threads.

use dfdx::prelude::*;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// How many free buffers a thread keeps, and how many values in all (256 MiB).
const KEPT: usize = 24;
const KEPT_VALUES: usize = 64 << 20;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's free list, returned to the list of the thread that drops
/// it.
pub(super) struct Scratch(Vec<f32>);

impl Scratch {
    /// `len` zeros, in the smallest free buffer that holds them (or a new one).
    pub(super) fn zeroed(len: usize) -> Scratch {
        let mut v = FREE
            .with(|free| {
                let mut free = free.borrow_mut();
                let best = (0..free.len())
                    .filter(|&i| free[i].capacity() >= len)
                    .min_by_key(|&i| free[i].capacity())?;
                Some(free.swap_remove(best))
            })
            .unwrap_or_default();
        v.clear();
        v.resize(len, 0.0);
        Scratch(v)
    }

    /// A copy of `t`'s values: one `memcpy` of its buffer. `t` must lie contiguous in
    /// row-major order, as every tensor the tape ops read does: each is the output of an
    /// op (dfdx's element-wise ops, its reshapes and kiln's tape ops all write their
    /// outputs so) or the batch itself; checked against dfdx's element walk in debug
    /// builds.
    pub(super) fn copy_of<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> Scratch {
        let mut s = Scratch::zeroed(t.shape().num_elements());
        t.copy_into(&mut s);
        debug_assert!(
            s.iter()
                .zip(t.as_vec())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "a tape op's input is not contiguous"
        );
        s
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() > 0 {
            // a thread already torn down drops the buffer instead
            let _ = FREE.try_with(|free| {
                let mut free = free.borrow_mut();
                let held: usize = free.iter().map(Vec::capacity).sum();
                if free.len() < KEPT && held + v.capacity() <= KEPT_VALUES {
                    free.push(v);
                }
            });
        }
    }
}
