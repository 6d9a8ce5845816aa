import Foundation
import Runtime

/// Collective bandwidth benchmark (`titan bench`), with nccl-tests' definitions:
/// bytes = the whole buffer; algbw = bytes / time; busbw = algbw × (n-1)/n
/// (× 2(n-1)/n for all-reduce), the rate each link must sustain. `of_ring` = busbw over the transport's ring ceiling
/// measured first in the same run: every rank passing 2 MiB messages around the ring (`ringPass`), the rate no ring
/// collective over these sockets can beat.
public enum CollectiveBench {
    public struct Row: Sendable {
        public var collective: String
        public var world: Int
        public var bytes: Int
        public var timeMicroseconds: Double
        public var algbwGBps: Double { Double(bytes) / (timeMicroseconds * 1e-6) / 1e9 }
        public var busbwGBps: Double
        /// busbw / the transport ring ceiling of the same run.
        public var ofRing: Double

        public var json: String {
            jsonLine(["collective": collective, "world": world, "bytes": bytes, "time_us": rounded(timeMicroseconds, places: 1),
                      "algbw_gbps": rounded(algbwGBps, places: 4), "busbw_gbps": rounded(busbwGBps, places: 4),
                      "of_ring": rounded(ofRing, places: 3)])
        }
    }

    public static let sizes = [64 << 10, 1 << 20, 16 << 20]
    public static let collectives = ["all_gather", "reduce_scatter", "all_reduce", "all_to_all"]

    /// Runs every collective at every size on the world group; every rank returns the same rows
    /// (time = the slowest rank's mean).
    public static func run(comm: Communicator, sizes: [Int] = sizes, print: (String) -> Void) throws -> [Row] {
        let g = comm.world!
        let n = g.size
        var rows: [Row] = []
        let ceiling = try ringCeiling(g)
        if comm.rank == 0 {
            print(String(format: "transport ring ceiling: %.3f GB/s per link (%d ranks passing 2 MiB messages, like zmq_ring_ceiling.py)", ceiling, n))
            print("collective      world      bytes      time_us  algbw GB/s  busbw GB/s  of ring")
        }
        for bytes in sizes {
            let count = bytes / 4 / n * n  // whole buffer, divisible by the world
            let full = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            let shard = UnsafeMutableBufferPointer<Float>.allocate(capacity: count / n)
            let other = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            defer { full.deallocate(); shard.deallocate(); other.deallocate() }
            for i in 0..<count { full[i] = Float(i % 977) * 0.25; other[i] = 0 }
            for i in 0..<(count / n) { shard[i] = Float(i % 331) }
            let splits = Array(repeating: count / n, count: n)

            for name in collectives {
                let op: () throws -> Void
                var factor = Double(n - 1) / Double(n)
                switch name {
                case "all_gather": op = { try g.allGather(UnsafeBufferPointer(shard), into: full) }
                case "reduce_scatter": op = { try g.reduceScatter(UnsafeBufferPointer(full), into: shard) }
                case "all_reduce":
                    factor *= 2
                    op = { try g.allReduce(full, op: .avg) }  // avg keeps values bounded across iterations
                default: op = { try g.allToAll(UnsafeBufferPointer(full), sendCounts: splits, into: other, receiveCounts: splits) }
                }
                let iterations = max(3, min(50, (64 << 20) / max(bytes, 1)))
                try op()  // warm-up (connections, page faults)
                try g.barrier()
                let start = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<iterations { try op() }
                let mine = Float(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e3 / Double(iterations))
                let slowest = try g.allReduce([mine], op: .max)[0]
                let busbw = Double(count * 4) / (Double(slowest) * 1e-6) / 1e9 * factor
                let row = Row(collective: name, world: n, bytes: count * 4, timeMicroseconds: Double(slowest),
                              busbwGBps: busbw, ofRing: ceiling > 0 ? busbw / ceiling : 0)
                rows.append(row)
                if comm.rank == 0 {
                    print(name.padding(toLength: 15, withPad: " ", startingAt: 0)
                          + String(format: " %5d %10d %12.1f %11.3f %11.3f %7.0f%%", n, row.bytes, row.timeMicroseconds, row.algbwGBps,
                                   row.busbwGBps, row.ofRing * 100))
                }
            }
        }
        if comm.rank == 0 {
            print(jsonLine(["transport_ring_gbps": rounded(ceiling, places: 4), "world": n, "message_bytes": ringMessageBytes]))
            rows.forEach { print($0.json) }
        }
        return rows
    }

    static let ringMessageBytes = 2 << 20

    /// GB/s per link of `ringPass` with 2 MiB messages (0 on one rank: there is no link).
    static func ringCeiling(_ g: ProcessGroup) throws -> Double {
        guard g.size > 1 else { return 0 }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ringMessageBytes, alignment: 64)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 1)
        let repeats = 50
        try g.ringPass(UnsafeRawBufferPointer(buffer), repeats: 3)   // warm-up
        try g.barrier()
        let start = DispatchTime.now().uptimeNanoseconds
        try g.ringPass(UnsafeRawBufferPointer(buffer), repeats: repeats)
        let mine = Float(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        let slowest = try g.allReduce([mine], op: .max)[0]
        return Double(ringMessageBytes * repeats) / Double(slowest) / 1e9
    }
}
