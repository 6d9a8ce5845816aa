import Runtime

/// out_N = w_ND · x_D (or out_N += when `accumulate`): `matmul_forward` for one row, as N dot products. A decoding
/// step multiplies one position by every weight matrix: as a GEMM that row costs packing the whole weight (as much
/// memory traffic as the product, and more time); here each weight row is read once, straight from memory. With
/// bfloat16 matmul precision it is `matmul_forward` itself, which rounds its inputs as autocast does.
public func matvec_forward(_ out_N: UnsafeMutablePointer<Float>, _ x_D: UnsafePointer<Float>, _ w_ND: UnsafePointer<Float>,
                           D: Int, N: Int, accumulate: Bool = false) {
    if BLAS.matmulPrecision == .bfloat16 {
        matmul_forward(out_N, x_D, w_ND, T: 1, D: D, N: N, accumulate: accumulate)
        return
    }
    parallelFor(N, costPerItem: 2 * D) { rows in
        for n in rows {
            let s = dot(x_D, w_ND + n * D, D)
            out_N[n] = accumulate ? out_N[n] + s : s
        }
    }
}
