// Rank-to-CPU binding, as MPI launchers bind ranks. With more ranks than cores, the ranks that talk most (the
// neighbours of a ring, the members of an EP group) are consecutive; keeping them on one CPU turns their socket
// hand-offs into same-CPU wake-ups instead of cross-CPU ones (an inter-processor interrupt each, costly in a VM) and
// keeps each rank's memory in one core's caches.
import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How the launcher places the ranks it starts on the CPUs it may use.
public enum CPUBindPolicy: String, CaseIterable, Sendable {
    /// The allowed CPUs cut into contiguous blocks, ranks in order: with more ranks than CPUs consecutive ranks
    /// share one CPU; with fewer, each rank gets a contiguous share (sizes differ by at most one).
    case block
    /// No binding: the kernel's scheduler places every thread.
    case none
}

public enum CPUBinding {
    /// glibc's cpu_set_t: 1024 CPUs as 16 words.
    static let maskWords = 16
    /// CPUs a mask can name: 0 ..< maxCPUs.
    public static let maxCPUs = maskWords * 64

    /// The CPUs the calling thread may run on (its affinity mask), ascending; empty where unknown.
    public static func allowedCPUs() -> [Int] { cpus(ofThread: 0) }

    /// The union of the masks of every thread of this process (Linux: /proc/self/task), ascending: what a
    /// binding has to cover, including threads that libraries started on their own.
    public static func processCPUs() -> [Int] {
        #if os(Linux)
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        let tids = tasks.compactMap { Int32($0) }
        return Array(Set(tids.flatMap { cpus(ofThread: $0) })).sorted()
        #else
        return allowedCPUs()
        #endif
    }

    private static func cpus(ofThread tid: Int32) -> [Int] {
        #if os(Linux)
        var mask = [UInt64](repeating: 0, count: maskWords)
        guard titan_sched_getaffinity(tid, maskWords * 8, &mask) == 0 else { return [] }
        return (0..<maxCPUs).filter { mask[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
        #else
        return []
        #endif
    }

    /// The CPUs of the `index`-th of `count` ranks placed on `cpus` under `policy` (nil: leave it unbound).
    public static func assignment(_ policy: CPUBindPolicy, index: Int, count: Int, cpus: [Int]) -> [Int]? {
        precondition(count >= 1 && (0..<count).contains(index), "rank index \(index) of \(count)")
        let m = cpus.count
        guard policy == .block, m > 1, count > 1 else { return nil }
        if count >= m { return [cpus[index * m / count]] }
        return Array(cpus[(index * m / count)..<((index + 1) * m / count)])
    }

    /// Restricts the calling thread, and every thread it starts afterwards, to `cpus`.
    public static func bindCallingThread(to cpus: [Int]) throws {
        #if os(Linux)
        var mask = [UInt64](repeating: 0, count: maskWords)
        for c in cpus {
            guard (0..<maxCPUs).contains(c) else { throw CPUBindingError(cpus: cpus, reason: "CPU \(c) is out of range") }
            mask[c / 64] |= 1 << UInt64(c % 64)
        }
        guard titan_sched_setaffinity(0, maskWords * 8, &mask) == 0 else {
            throw CPUBindingError(cpus: cpus, reason: String(cString: strerror(errno)))
        }
        #else
        throw CPUBindingError(cpus: cpus, reason: "CPU binding is supported on Linux only")
        #endif
    }

    /// Runs `body` with the calling thread bound to `cpus` (nil: as it is), then restores the thread's mask. A process
    /// spawned in `body` starts bound, so even the threads its libraries start before `main` (OpenBLAS's pool)
    /// inherit the binding.
    public static func withCallingThread<T>(boundTo cpus: [Int]?, _ body: () throws -> T) throws -> T {
        guard let cpus else { return try body() }
        let saved = allowedCPUs()
        try bindCallingThread(to: cpus)
        defer { try? bindCallingThread(to: saved) }
        return try body()
    }

    /// "0,2-3" → [0, 2, 3] (the kernel's cpu-list syntax, as taskset -c takes it); nil when malformed or naming a
    /// CPU at or above `maxCPUs`.
    public static func parseList(_ text: String) -> [Int]? {
        var cpus = Set<Int>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
                .map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard (1...2).contains(bounds.count), let lo = bounds[0], let hi = bounds[bounds.count - 1],
                  0 <= lo, lo <= hi, hi < maxCPUs else { return nil }
            cpus.formUnion(lo...hi)
        }
        return cpus.isEmpty ? nil : cpus.sorted()
    }

    /// [0, 2, 3] → "0,2-3".
    public static func formatList(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var i = 0
        let sorted = Array(Set(cpus)).sorted()
        while i < sorted.count {
            var j = i
            while j + 1 < sorted.count, sorted[j + 1] == sorted[j] + 1 { j += 1 }
            parts.append(i == j ? "\(sorted[i])" : "\(sorted[i])-\(sorted[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }
}

public struct CPUBindingError: Error, CustomStringConvertible {
    public let cpus: [Int]
    public let reason: String
    public var description: String { "cannot bind to CPU(s) \(CPUBinding.formatList(cpus)): \(reason)" }
}
