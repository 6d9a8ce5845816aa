import XCTest
import Model
import Tensor

final class ModelGradientTests: XCTestCase {
    func testDenseFiniteDifferences() throws {
        let m = try Qwen3Model(args: tinyArgs(moe: false), seed: 1)
        checkModelGradients(m, B: 2, T: 5)
    }

    func testDenseTiedFiniteDifferences() throws {
        let m = try Qwen3Model(args: tinyArgs(moe: false, tied: true), seed: 2)
        XCTAssertNil(m.output)
        checkModelGradients(m, B: 2, T: 5)
    }

    func testMoESoftmaxFiniteDifferences() throws {
        let m = try Qwen3Model(args: tinyArgs(moe: true), seed: 3)
        checkModelGradients(m, B: 2, T: 6)
    }

    func testMoESoftmaxLoopPathFiniteDifferences() throws {
        let m = try Qwen3Model(args: tinyArgs(moe: true, grouped: false), seed: 3)
        checkModelGradients(m, B: 2, T: 6)
    }

    func testMoESigmoidScaledUnnormalisedFiniteDifferences() throws {
        let m = try Qwen3Model(args: tinyArgs(moe: true, scoreFunc: .sigmoid, routeNorm: false, routeScale: 2.5), seed: 4)
        checkModelGradients(m, B: 2, T: 6)
    }

    func testMoESigmoidNormalisedSharedExpertsWithBiasFiniteDifferences() throws {
        let m = try Qwen3Model(args: tinyArgs(moe: true, scoreFunc: .sigmoid, routeNorm: true, shared: 2, lbCoeff: 1e-3), seed: 5)
        XCTAssertNotNil(m.layers[0].moe?.shared)
        // a nonzero bias that changes the selection: gradients must still flow through the unbiased scores
        for l in m.layers { for e in 0..<4 { l.moe!.expertBias.data[e] = Float(e) * 0.05 } }
        checkModelGradients(m, B: 2, T: 6)
    }

    func testMoEInterleavedDenseAndSparseLayers() throws {
        var a = tinyArgs(moe: true, shared: 1)
        a.n_layers = 3; a.decoder_sparse_step = 2  // layer 1 is MoE, layers 0 and 2 dense
        let m = try Qwen3Model(args: a, seed: 6)
        XCTAssertNil(m.layers[0].moe); XCTAssertNotNil(m.layers[1].moe); XCTAssertNil(m.layers[2].moe)
        checkModelGradients(m, B: 1, T: 7)
    }
}
