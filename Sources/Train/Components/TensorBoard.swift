// TensorBoard event files (torchtitan's TensorBoardLogger): rank 0 writes DUMP/<save_tb_folder>/<YYYYmmdd-HHMM>/
// events.out.tfevents.<time>.<host>, one scalar per metric per step, under torchtitan's tags where it has one.
// There is no Swift TensorBoard library, and scalars need little: TFRecord framing around protobuf `Event`s, written
// by hand below and checked byte for byte against TensorBoard's own writer (Tests/TrainTests/Fixtures).

import Foundation

/// TensorBoard's file format, just what scalars need.
public enum TensorBoardEvents {
    /// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.
    static let crcTable: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }

    public static func crc32c(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }

    /// TFRecord's masking, so a CRC of data that holds CRCs stays well distributed.
    public static func maskedCRC(_ bytes: [UInt8]) -> UInt32 {
        let c = crc32c(bytes)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }

    /// One TFRecord: length (u64 LE), masked CRC of the length, the data, masked CRC of the data.
    public static func record(_ data: [UInt8]) -> [UInt8] {
        let length = littleEndian(UInt64(data.count))
        return length + littleEndian(maskedCRC(length)) + data + littleEndian(maskedCRC(data))
    }

    /// The first event of every file: `file_version: "brain.Event:2"`.
    public static func fileVersionEvent(wallTime: Double) -> [UInt8] {
        event(wallTime: wallTime, step: 0, body: lengthDelimited(field: 3, Array("brain.Event:2".utf8)))
    }

    /// An `Event` whose `summary` holds one `Summary.Value { tag, simple_value }` per scalar.
    public static func scalarsEvent(wallTime: Double, step: Int64, _ scalars: [(tag: String, value: Float)]) -> [UInt8] {
        var summary: [UInt8] = []
        for (tag, value) in scalars {
            let v = lengthDelimited(field: 1, Array(tag.utf8)) + [0x15] + littleEndian(value.bitPattern)   // simple_value = 2, fixed32
            summary += lengthDelimited(field: 1, v)                                                         // Summary.value = 1
        }
        return event(wallTime: wallTime, step: step, body: lengthDelimited(field: 5, summary))            // Event.summary = 5
    }

    /// Event { double wall_time = 1; int64 step = 2; ... }. proto3 leaves out fields at their default (0).
    static func event(wallTime: Double, step: Int64, body: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        if wallTime != 0 { out += [0x09] + littleEndian(wallTime.bitPattern) }
        if step != 0 { out += [0x10] + varint(UInt64(bitPattern: step)) }
        return out + body
    }

    static func lengthDelimited(field: Int, _ bytes: [UInt8]) -> [UInt8] {
        varint(UInt64(field << 3 | 2)) + varint(UInt64(bytes.count)) + bytes
    }

    static func varint(_ value: UInt64) -> [UInt8] {
        var v = value, out: [UInt8] = []
        while v >= 0x80 { out.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        return out + [UInt8(v)]
    }

    static func littleEndian<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
        withUnsafeBytes(of: v.littleEndian) { Array($0) }
    }
}

/// Rank 0's TensorBoard sink: each metrics row becomes one event of scalars.
public final class TensorBoardLogger {
    public let path: String
    private let handle: FileHandle

    /// A new run folder `folder/YYYYmmdd-HHMM` (torchtitan's layout; a restarted job gets its own, which TensorBoard
    /// shows as one run per attempt when it is a new minute, and merges otherwise).
    public init(folder: String, now: Date = Date()) throws {
        let stamp = DateFormatter()
        stamp.dateFormat = "yyyyMMdd-HHmm"
        stamp.timeZone = TimeZone(identifier: "UTC")
        let dir = folder + "/" + stamp.string(from: now)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let host = ProcessInfo.processInfo.hostName
        path = dir + "/events.out.tfevents.\(Int(now.timeIntervalSince1970)).\(host).\(getpid())"
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
        handle = h
        try append(TensorBoardEvents.fileVersionEvent(wallTime: now.timeIntervalSince1970))
    }

    public func write(_ m: StepMetrics) throws {
        let scalars = Self.scalars(of: m).map { ($0.tag, Float($0.value)) }
        try append(TensorBoardEvents.scalarsEvent(wallTime: Date().timeIntervalSince1970, step: Int64(m.step), scalars))
    }

    public func close() throws {
        do { try handle.synchronize() } catch { throw MetricsError.write(path: path, "\(error)") }
    }

    /// Flushed every step, as metrics.jsonl is, so TensorBoard follows a running job.
    private func append(_ event: [UInt8]) throws {
        do { try handle.write(contentsOf: Data(TensorBoardEvents.record(event))) } catch {
            throw MetricsError.write(path: path, "\(error)")
        }
    }

    /// The tags of a row: torchtitan's where it has the metric, ours under their own prefixes.
    public static func scalars(of m: StepMetrics) -> [(tag: String, value: Double)] {
        var out: [(tag: String, value: Double)] = [("loss_metrics/global_avg_loss", m.loss), ("grad_norm", m.grad_norm),
                                                   ("lr", m.lr), ("throughput(tps)", m.tokens_per_sec),
                                                   ("time_metrics/end_to_end(s)", m.step_time_s)]
        let renamed: [String: String] = ["max_rank_loss": "loss_metrics/global_max_loss", "tflops": "tflops", "mfu": "mfu(%)", "validation_loss": "validation_metrics/loss",
                                         "max_rss_mb": "memory/max_rss(MiB)", "current_rss_mb": "memory/current_rss(MiB)",
                                         "comm_wait_s": "comm/wait(s)", "comm_sent_mb": "comm/sent(MiB)",
                                         "comm_inter_host_mb": "comm/inter_host(MiB)",
                                         "ep_dispatch_bytes": "comm/ep_dispatch(bytes)"]
        for (key, value) in m.extra {
            if let tag = renamed[key] {
                out.append((tag, value))
            } else if key.hasPrefix("comm_sent_mb_") {
                out.append(("comm/sent_\(key.dropFirst("comm_sent_mb_".count))(MiB)", value))
            } else if key.hasPrefix("expert_load_") {
                out.append(("expert_load/\(key.dropFirst("expert_load_".count))", value))   // min/max/cv per layer
            } else {
                out.append((key, value))
            }
        }
        if let wait = m["comm_wait_s"], m.step_time_s > 0 { out.append(("comm/wait(%)", 100 * wait / m.step_time_s)) }
        return out
    }
}
