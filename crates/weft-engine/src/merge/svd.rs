//! The top singular triplets of a matrix, for LoRA extraction: ComfyUI takes them from
//! `torch.linalg.svd`; candle has no SVD, so they come from subspace iteration (randomised
//! range finder with power steps, Halko et al. 2011) and a Jacobi eigensolver on the small
//! projected Gram matrix, all in f64. When the rank asked for (plus oversampling) nears the
//! matrix's smaller side, or that side is small, the subspace is the whole space and the result
//! is exact.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

/// Extra directions the subspace keeps beyond the rank asked for.
const OVERSAMPLE: usize = 10;
/// Power steps: each sharpens the subspace towards the top singular vectors (a flat spectrum, as
/// of random matrices, needs the most).
const POWER_STEPS: usize = 16;
/// Up to this smaller side, or when the subspace would cover half of it, the whole space is
/// taken: exact, and cheap at that size.
const EXACT_SIDE: usize = 64;

/// `(U·diag(S), Vh)` of the top `rank` singular triplets of the 2-D `a` (any float dtype):
/// `[m, r]` and `[r, n]` f64 tensors on the CPU, `r = min(rank, m, n)`, singular values
/// descending. Deterministic: the random start is seeded.
pub(crate) fn top_singular(a: &Tensor, rank: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let (m, n) = a.dims2()?;
    if m > n {
        // Work on the wide side: the Gram matrix is then the smaller one.
        let (us, vh) = top_singular(&a.t()?.contiguous()?, rank)?;
        // A = U S Vh  <=>  Aᵀ = Vhᵀ S Uᵀ.
        // The singular values are the norms of U·S's columns.
        let s = us.sqr()?.sum(0)?.sqrt()?;
        let u_s = vh.t()?.broadcast_mul(&s.unsqueeze(0)?)?;
        let vh_t = us.broadcast_div(&safe(&s)?.unsqueeze(0)?)?.t()?;
        return Ok((u_s.contiguous()?, vh_t.contiguous()?));
    }
    let r = rank.min(m);
    let k = (r + OVERSAMPLE).min(m);
    let k = if m <= EXACT_SIDE || 2 * k >= m { m } else { k };
    let q = if k == m {
        Tensor::eye(m, DType::F64, &Device::Cpu)?
    } else {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let omega: Vec<f64> = (0..n * k).map(|_| normal(&mut rng)).collect();
        let omega = Tensor::from_vec(omega, (n, k), &Device::Cpu)?;
        let mut q = orthonormal_columns(&a.matmul(&omega)?)?;
        for _ in 0..POWER_STEPS {
            let z = orthonormal_columns(&a.t()?.matmul(&q)?)?;
            q = orthonormal_columns(&a.matmul(&z)?)?;
        }
        q
    };
    // B = Qᵀ A; B Bᵀ = W Λ Wᵀ; A ≈ Q B = (Q W) Σ (Σ⁻¹ Wᵀ B).
    let b = q.t()?.matmul(&a)?;
    let gram = b.matmul(&b.t()?)?;
    let (values, vectors) = symmetric_eigen(&gram.to_vec2::<f64>()?);
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]));
    let top = &order[..r];
    let sigma: Vec<f64> = top.iter().map(|&i| values[i].max(0.0).sqrt()).collect();
    let w: Vec<f64> = (0..k)
        .flat_map(|row| top.iter().map(move |&i| (row, i)))
        .map(|(row, i)| vectors[row][i])
        .collect();
    let w = Tensor::from_vec(w, (k, r), &Device::Cpu)?;
    let s = Tensor::new(sigma.as_slice(), &Device::Cpu)?;
    let u_s = q.matmul(&w)?.broadcast_mul(&s.unsqueeze(0)?)?;
    let vh = w.t()?.matmul(&b)?.broadcast_div(&safe(&s)?.unsqueeze(1)?)?;
    Ok((u_s, vh))
}

/// `s` with zeros replaced by ones, for dividing by singular values that may be zero (their
/// vectors are zero then, and so is the quotient).
fn safe(s: &Tensor) -> candle_core::Result<Tensor> {
    let zero = s.eq(0.0)?;
    zero.where_cond(&s.ones_like()?, s)
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// An orthonormal basis of `y`'s columns (modified Gram-Schmidt, twice for stability); a column
/// that depends on the ones before it becomes zero.
fn orthonormal_columns(y: &Tensor) -> candle_core::Result<Tensor> {
    let (m, k) = y.dims2()?;
    let rows = y.to_vec2::<f64>()?;
    let mut cols: Vec<Vec<f64>> = (0..k)
        .map(|j| rows.iter().map(|r| r[j]).collect())
        .collect();
    let scale = cols.iter().map(|c| dot(c, c).sqrt()).fold(0.0f64, f64::max);
    for j in 0..k {
        for _ in 0..2 {
            for i in 0..j {
                let (done, rest) = cols.split_at_mut(j);
                let proj = dot(&done[i], &rest[0]);
                for (x, q) in rest[0].iter_mut().zip(&done[i]) {
                    *x -= proj * q;
                }
            }
        }
        let norm = dot(&cols[j], &cols[j]).sqrt();
        if norm > scale * 1e-12 && norm > 0.0 {
            cols[j].iter_mut().for_each(|x| *x /= norm);
        } else {
            cols[j].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let data: Vec<f64> = (0..m)
        .flat_map(|i| cols.iter().map(move |c| c[i]))
        .collect();
    Tensor::from_vec(data, (m, k), &Device::Cpu)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Eigenvalues and eigenvectors (as columns) of the symmetric matrix `a`, by cyclic Jacobi
/// rotations until the off-diagonal part is negligible.
fn symmetric_eigen(a: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut a: Vec<Vec<f64>> = a.to_vec();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    let total: f64 = a.iter().flatten().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        if off <= total * 1e-30 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p][q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (x, y) = (row[p], row[q]);
                    row[p] = c * x - s * y;
                    row[q] = s * x + c * y;
                }
                // Rows p and q change together, so one index walks both.
                #[allow(clippy::needless_range_loop)]
                for k in 0..n {
                    let (x, y) = (a[p][k], a[q][k]);
                    a[p][k] = c * x - s * y;
                    a[q][k] = s * x + c * y;
                }
                for row in v.iter_mut() {
                    let (x, y) = (row[p], row[q]);
                    row[p] = c * x - s * y;
                    row[q] = s * x + c * y;
                }
            }
        }
    }
    ((0..n).map(|i| a[i][i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(m: usize, n: usize, seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let data: Vec<f64> = (0..m * n).map(|_| normal(&mut rng)).collect();
        Tensor::from_vec(data, (m, n), &Device::Cpu).unwrap()
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn full_rank_reconstructs_the_matrix() {
        for (m, n) in [(6, 9), (9, 6), (5, 5)] {
            let a = matrix(m, n, 1);
            let (us, vh) = top_singular(&a, 20).unwrap();
            assert_eq!(us.dims(), &[m, m.min(n)]);
            assert_eq!(vh.dims(), &[m.min(n), n]);
            assert!(max_abs(&us.matmul(&vh).unwrap(), &a) < 1e-9);
        }
    }

    #[test]
    fn a_low_rank_matrix_is_found_exactly_by_subspace_iteration() {
        // Rank 3, 100 x 150 (past the exact sizes): the subspace of 3 + oversampling holds it.
        let a = matrix(100, 3, 2).matmul(&matrix(3, 150, 3)).unwrap();
        let (us, vh) = top_singular(&a, 3).unwrap();
        assert!(max_abs(&us.matmul(&vh).unwrap(), &a) < 1e-8);
        let (us, vh) = top_singular(&a.t().unwrap(), 3).unwrap();
        assert!(max_abs(&us.matmul(&vh).unwrap(), &a.t().unwrap()) < 1e-8);
    }

    #[test]
    fn a_zero_matrix_gives_zero_factors() {
        let a = Tensor::zeros((4, 7), DType::F32, &Device::Cpu).unwrap();
        let (us, vh) = top_singular(&a, 2).unwrap();
        assert_eq!(
            us.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            0.0
        );
        assert_eq!(
            vh.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            0.0
        );
    }
}
