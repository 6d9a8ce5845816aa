import Foundation
import Runtime

/// Collective bandwidth benchmark (`titan bench`), with nccl-tests' definitions:
/// bytes = the whole buffer; algbw = bytes / time; busbw = algbw × (n-1)/n
/// (× 2(n-1)/n for all-reduce), the rate each link must sustain. `of_ring` = busbw over the transport's ring ceiling
/// measured first in the same run: every rank passing 2 MiB messages around the ring (`ringPass`), the rate no ring
/// collective over these sockets can beat.
///
/// On a tcp job with CURVE it then runs the same table on a plaintext group of the same ranks (transport_security =
/// "none": no encryption, and zero-copy sends stay zero-copy) and prints busbw with and without CURVE side by side, so
/// CURVE's cost (a copy and an encryption per message, a decryption per received one) is known.
///
/// Each row also counts the payload bytes that crossed hosts in one call, summed over the ranks (`inter_host_bytes`;
/// a column when the topology has several hosts). Under a simulated network (LinkShaper.swift) a ring crosses each host
/// boundary once per direction, so a ring's busbw, the rate each link sustains, is the inter-host link's rate.
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
        /// The group's transport security: "curve" or "none" (ipc and inproc are "none").
        public var security = "none"
        /// "ring" (the flat algorithms) or "hierarchical".
        public var algorithm = "ring"
        /// Payload bytes one collective sent from a host to another, summed over the ranks (0 on one host).
        public var interHostBytes = 0

        public var json: String {
            jsonLine(["collective": collective, "world": world, "bytes": bytes, "time_us": rounded(timeMicroseconds, places: 1),
                      "algbw_gbps": rounded(algbwGBps, places: 4), "busbw_gbps": rounded(busbwGBps, places: 4),
                      "of_ring": rounded(ofRing, places: 3), "security": security,
                      "algorithm": algorithm, "inter_host_bytes": interHostBytes])
        }
    }

    public static let sizes = [64 << 10, 1 << 20, 16 << 20]
    public static let collectives = ["all_gather", "reduce_scatter", "all_reduce", "all_to_all"]

    /// Runs every collective at every size on the world group; every rank returns the same rows
    /// (time = the slowest rank's mean).
    public static func run(comm: Communicator, sizes: [Int] = sizes, collectives: [String] = collectives,
                           print: (String) -> Void) throws -> [Row] {
        let security = comm.spec.usesCurve && comm.worldSize > 1 ? "curve" : "none"
        var rows = try measure(comm.world!, comm: comm, sizes: sizes, collectives: collectives, security: security, print: print)
        guard security == "curve" else { return rows }

        // The same on a plaintext group of the same ranks: what CURVE costs.
        let plain = try comm.newGroup(ranks: Array(0..<comm.worldSize), transportSecurity: .none)!
        if comm.rank == 0 { print("\nthe same on a plaintext group of the same ranks (transport_security = \"none\"):") }
        let plainRows = try measure(plain, comm: comm, sizes: sizes, collectives: collectives, security: "none", print: print)
        rows += plainRows
        if comm.rank == 0 {
            let curveRows = rows.prefix(plainRows.count)
            print("\nCURVE's cost: busbw GB/s with and without CURVE")
            print("collective     algorithm           bytes       curve        none  curve/none")
            for (c, p) in zip(curveRows, plainRows) {
                print(c.collective.padding(toLength: 15, withPad: " ", startingAt: 0) + c.algorithm.padding(toLength: 13, withPad: " ", startingAt: 0)
                      + String(format: " %10d %11.3f %11.3f %10.0f%%", c.bytes, c.busbwGBps, p.busbwGBps, c.busbwGBps / p.busbwGBps * 100))
            }
        }
        return rows
    }

    /// The ring ceiling, then every collective at every size, on `g`; rank 0 prints the table and the JSON lines. On
    /// several hosts with `--comm.algorithm auto`, each collective under both algorithms (else under the chosen one).
    static func measure(_ g: ProcessGroup, comm: Communicator, sizes: [Int], collectives: [String], security: String,
                        print: (String) -> Void) throws -> [Row] {
        let n = g.size, rank = comm.rank
        let chosen = comm.algorithm
        defer { comm.setAlgorithm(chosen) }
        let algorithms: [CollectiveAlgorithm] = chosen == .auto && g.hostCount > 1 ? [.ring, .hierarchical] : [g.algorithm]
        var rows: [Row] = []
        let ceiling = try ringCeiling(g)
        let label = security == "curve" ? ", CURVE" : ""
        let hosts = Set(comm.spec.hostIndexOfRank).count
        if rank == 0 {
            if let network = comm.spec.network { print("simulated network: " + describe(network)) }
            print(String(format: "transport ring ceiling: %.3f GB/s per link (%d ranks passing 2 MiB messages, like scripts/zmq_ring_ceiling.c", ceiling, n)
                  + label + ")")
            print("collective     algorithm     world      bytes      time_us  algbw GB/s  busbw GB/s  of ring" + (hosts > 1 ? "  inter-host MiB" : ""))
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
                for algorithm in algorithms {
                    comm.setAlgorithm(algorithm)
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
                    let before = comm.traffic
                    let start = DispatchTime.now().uptimeNanoseconds
                    for _ in 0..<iterations { try op() }
                    let mine = Float(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e3 / Double(iterations))
                    let crossed = (comm.traffic - before).totalSentInterHost.bytes / iterations
                    let slowest = try g.allReduce([mine], op: .max)[0]
                    let interHost = try g.allReduce([Int64(crossed)], op: .sum)[0]
                    let busbw = Double(count * 4) / (Double(slowest) * 1e-6) / 1e9 * factor
                    let row = Row(collective: name, world: n, bytes: count * 4, timeMicroseconds: Double(slowest),
                                  busbwGBps: busbw, ofRing: ceiling > 0 ? busbw / ceiling : 0, security: security,
                                  algorithm: algorithm.rawValue, interHostBytes: Int(interHost))
                    rows.append(row)
                    if rank == 0 {
                        print(name.padding(toLength: 15, withPad: " ", startingAt: 0) + row.algorithm.padding(toLength: 13, withPad: " ", startingAt: 0)
                              + String(format: " %5d %10d %12.1f %11.3f %11.3f %7.0f%%", n, row.bytes, row.timeMicroseconds, row.algbwGBps,
                                       row.busbwGBps, row.ofRing * 100)
                              + (hosts > 1 ? String(format: " %15.2f", Double(row.interHostBytes) / 1_048_576) : ""))
                    }
                }
            }
        }
        if rank == 0 {
            print(jsonLine(["transport_ring_gbps": rounded(ceiling, places: 4), "world": n, "message_bytes": ringMessageBytes,
                            "security": security]))
            rows.forEach { print($0.json) }
        }
        return rows
    }

    static let ringMessageBytes = 2 << 20

    /// e.g. "between hosts 0.200 GB/s per direction, +20 us; within a host unlimited" (host 0's links, and every
    /// host that differs from it).
    static func describe(_ network: NetworkSpec) -> String {
        func link(_ l: NetworkSpec.Link) -> String {
            (l.bytesPerSecond.map { String(format: "%.3f GB/s per direction", $0 / 1e9) } ?? "unlimited")
                + (l.latencyNanoseconds > 0 ? String(format: ", +%.0f us", Double(l.latencyNanoseconds) / 1e3) : "")
        }
        func host(_ h: NetworkSpec.Host) -> String { "between hosts \(link(h.interHost)); within a host \(link(h.intraHost))" }
        var text = host(network.hosts[0])
        for (index, h) in network.hosts.enumerated().dropFirst() where h != network.hosts[0] { text += "; host \(index): " + host(h) }
        return text
    }

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
