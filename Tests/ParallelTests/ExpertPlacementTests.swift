import XCTest
@testable import Model
@testable import Parallel

/// `expert_parallel_placement auto`: the placement that sends fewer bytes between hosts, from the two traffics'
/// volumes, checked against the byte counts written out by hand for bench_moe (docs/simulated-network.md measured
/// them: 12 MiB of all-to-all against 36 MiB of expert weights per rank and step at 512 tokens per rank).
final class ExpertPlacementTests: XCTestCase {
    let benchMoE = Qwen3Flavors.all["bench_moe"]!
    let twoHosts = [0, 0, 0, 0, 1, 1, 1, 1]
    let dims = ParallelDims(replicate: 1, shard: 8, ep: 4)

    func traffic(tokens: Int, mp: MixedPrecisionPolicy = MixedPrecisionPolicy(), dims: ParallelDims? = nil) throws -> ExpertTraffic {
        ExpertTraffic(model: try Qwen3Model(args: benchMoE, seed: 1, materialize: false), dims: dims ?? self.dims,
                      tokens: tokens, mixedPrecision: mp, reshardAfterForward: .default)
    }

    func testVolumesAreTheHandCountedBytes() throws {
        let t = try traffic(tokens: 512)
        // 4 MoE layers × 4 passes × 512 tokens × top-2 × dim 256 × 4 B × 3/4 leaving the rank
        XCTAssertEqual(t.allToAllBytes, 4 * 4 * 512 * 2 * 256 * 4 * 0.75)
        // 4 layers × (16 experts × 3 × 256 × 512 / ep 4) parameters × (2 gathers + 1 reduce-scatter) × 4 B × 1/2
        XCTAssertEqual(t.expertShardBytes, 4 * (16.0 * 3 * 256 * 512 / 4) * 3 * 4 * 0.5)
        let bf16 = try traffic(tokens: 512, mp: MixedPrecisionPolicy(param: .bfloat16))
        XCTAssertEqual(bf16.allToAllBytes, t.allToAllBytes / 2)
        XCTAssertEqual(bf16.expertShardBytes, 4 * (16.0 * 3 * 256 * 512 / 4) * (2 * 2 + 4) * 0.5)
    }

    func testAutoKeepsTheHeavierTrafficWithinAHost() throws {
        // bench_moe at 512 tokens per rank: the experts' weights outweigh the tokens, so the expert-shard groups stay
        // within a host (strided EP groups); at 32k tokens per rank the all-to-all dominates (consecutive EP groups).
        XCTAssertEqual(try traffic(tokens: 512).placement(dims: dims, hostOfRank: twoHosts), .strided)
        XCTAssertEqual(try traffic(tokens: 32768).placement(dims: dims, hostOfRank: twoHosts), .consecutive)
        // One host, no expert parallelism, or ep = shard (no expert-shard group to place): consecutive, as before.
        XCTAssertEqual(try traffic(tokens: 512).placement(dims: dims, hostOfRank: Array(repeating: 0, count: 8)), .consecutive)
        XCTAssertEqual(try traffic(tokens: 512).placement(dims: dims, hostOfRank: []), .consecutive)
        let ep8 = ParallelDims(replicate: 1, shard: 8, ep: 8)
        XCTAssertEqual(try traffic(tokens: 512, dims: ep8).placement(dims: ep8, hostOfRank: twoHosts), .consecutive)
    }

    func testGroupsOfBothPlacements() {
        let consecutive = DeviceMesh.expertGroups(dims: dims, placement: .consecutive)
        XCTAssertEqual(consecutive.ep, [[0, 1, 2, 3], [4, 5, 6, 7]])
        XCTAssertEqual(consecutive.expertShard, [[0, 4], [1, 5], [2, 6], [3, 7]])
        let strided = DeviceMesh.expertGroups(dims: dims, placement: .strided)
        XCTAssertEqual(strided.ep, [[0, 2, 4, 6], [1, 3, 5, 7]])
        XCTAssertEqual(strided.expertShard, [[0, 1], [2, 3], [4, 5], [6, 7]])
        XCTAssertEqual(ExpertTraffic.remoteShare(consecutive.ep, twoHosts), 0)
        XCTAssertEqual(ExpertTraffic.remoteShare(strided.ep, twoHosts), 2.0 / 3)
        XCTAssertEqual(ExpertTraffic.remoteShare(consecutive.expertShard, twoHosts), 1)
        XCTAssertEqual(ExpertTraffic.remoteShare(strided.expertShard, twoHosts), 0)
    }
}
