//! The output layer between training and the saved model: the regression target is
//! learnt standardized and its scale folded back into the last layer, and a binary
//! cross-entropy head's single logit is widened to the two logits of a classifier.

use kiln_core::{ModelSpec, TensorStore};

/// Mean and standard deviation (ddof 0; 1 where it is 0) of the regression target on the
/// training split: the network learns `(y - mean) / std`, and [`fold_target_scale`] puts
/// the scale back into the output layer so the saved model predicts `y` itself.
pub(crate) fn target_scale(values: &[f32]) -> (f32, f32) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = if var > 0.0 { var.sqrt() } else { 1.0 };
    (mean as f32, std as f32)
}

/// Turns the single logit `s` of a binary cross-entropy head into the two logits
/// `[0, s]` of the saved spec: their softmax is `[1 - sigmoid(s), sigmoid(s)]`, the
/// same probabilities, so evaluation, int8 and ONNX export treat it as any classifier.
pub(crate) fn widen_binary_logit(spec: &ModelSpec, store: &mut TensorStore) {
    rewrite_output_layer(spec, store, |in_dim, _, w, b| {
        let w = w.iter().flat_map(|&v| [0.0, v]).collect();
        let b = vec![0.0, b.first().copied().unwrap_or(0.0)];
        ((vec![in_dim, 2], w), (vec![2], b))
    });
}

/// Rewrites the output layer `z` into `z * std + mean`: weights times `std`, bias times
/// `std` plus `mean`.
pub(crate) fn fold_target_scale(
    spec: &ModelSpec,
    store: &mut TensorStore,
    (mean, std): (f32, f32),
) {
    rewrite_output_layer(spec, store, |in_dim, out_dim, w, b| {
        let w = w.iter().map(|v| v * std).collect();
        let b = b.iter().map(|v| v * std + mean).collect();
        ((vec![in_dim, out_dim], w), (vec![out_dim], b))
    });
}

/// A (shape, values) pair of the store.
type Shaped = (Vec<usize>, Vec<f32>);

/// Replaces the output layer's weight and bias with what `f(in_dim, out_dim, weight,
/// bias)` returns (each as shape and values); a store without them is left as it is.
fn rewrite_output_layer(
    spec: &ModelSpec,
    store: &mut TensorStore,
    f: impl FnOnce(usize, usize, &[f32], &[f32]) -> (Shaped, Shaped),
) {
    let Some(last) = spec.layers.len().checked_sub(1) else {
        return;
    };
    let l = &spec.layers[last];
    let (wk, bk) = (
        format!("layers.{last}.weight"),
        format!("layers.{last}.bias"),
    );
    if let (Ok(w), Ok(b)) = (store.f32(&wk), store.f32(&bk)) {
        let ((ws, w), (bs, b)) = f(l.in_dim, l.out_dim, w, b);
        store.insert_f32(&wk, ws, w);
        store.insert_f32(&bk, bs, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{NativeModel, Task};

    #[test]
    fn folding_keeps_the_function() {
        use kiln_core::{Activation, Predictor};
        // a 1-input linear regressor y = 2x + 1 learned as (y - 10) / 4
        let spec = ModelSpec::mlp(1, &[], Activation::Identity, Task::Regression, 1);
        let mut s = TensorStore::default();
        s.insert_f32("layers.0.weight", vec![1, 1], vec![0.5]);
        s.insert_f32("layers.0.bias", vec![1], vec![-2.25]);
        fold_target_scale(&spec, &mut s, (10.0, 4.0));
        let mut m = NativeModel::new(spec, s).unwrap();
        // x = 3: (0.5 * 3 - 2.25) * 4 + 10 = 7 = 2 * 3 + 1
        assert_eq!(m.predict(&[3.0], 1).unwrap().logits, vec![7.0]);

        let spec = ModelSpec::mlp(2, &[], Activation::Identity, Task::Classification, 2);
        let mut s = TensorStore::default();
        s.insert_f32("layers.0.weight", vec![2, 1], vec![1.0, -1.0]);
        s.insert_f32("layers.0.bias", vec![1], vec![0.5]);
        widen_binary_logit(&spec, &mut s);
        assert_eq!(s.f32("layers.0.weight").unwrap(), &[0.0, 1.0, 0.0, -1.0]);
        let p = NativeModel::new(spec, s)
            .unwrap()
            .predict(&[2.0, 1.0], 1)
            .unwrap();
        // s = 2 - 1 + 0.5 = 1.5: p(1) = sigmoid(1.5)
        let sig = 1.0 / (1.0 + (-1.5f32).exp());
        assert!((p.probabilities[1] - sig).abs() < 1e-7);
    }
}
