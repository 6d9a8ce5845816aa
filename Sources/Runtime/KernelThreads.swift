// Multi-threading of the non-BLAS kernels. Work is split into a FIXED number of row ranges per call and every row is
// computed by the same code, so their results are bit-identical for any thread count (no cross-row reductions are
// split). GEMMs are not: a BLAS library rounds rows near the ends of its internal partitions differently, and the
// blocks of a split GEMM may go to another implementation (see Matmul.swift), so a GEMM split over threads by
// `BLAS.sgemm` can differ in the last bits from the unsplit one. A run is bitwise reproducible for a given thread count
// and idle-CPU lending setting (IdleCPUs.swift: a lending rank computes large GEMMs as two fixed halves).
// Regions nest safely: a kernel called from inside a kernel-thread region (one range of a `parallelFor`, one item of
// `parallelForEach`) runs serially on that thread, and its GEMMs are not split again.
import CLinux
import Foundation

public enum KernelThreads {
    /// Threads used by the element-wise / row-wise kernels and to split GEMMs (1 = serial): OPENBLAS_NUM_THREADS (the
    /// variable the launcher sets per rank, as for any BLAS program) up to the number of online CPUs, as OpenBLAS
    /// counts it; else that number. `BLAS.setThreads` changes it.
    public static var count: Int = {
        let cpus = max(1, ProcessInfo.processInfo.activeProcessorCount)
        if let v = getenv("OPENBLAS_NUM_THREADS"), let n = Int(String(cString: v)), n > 0 { return min(n, cpus) }
        return cpus
    }()
    /// Loops touching fewer floats than this run serially (tests set 0 to force the threaded path).
    public static var minWork: Int = 32_768

    /// True on a thread that is running one part of a kernel-thread region.
    public static var insideRegion: Bool { pthread_getspecific(regionKey) != nil }

    private static let regionKey: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "KernelThreads: pthread_key_create failed")
        return key
    }()

    /// Runs `body` marked as one part of a kernel-thread region (nested kernels stay serial).
    @inline(__always)
    public static func asRegionPart(_ body: () -> Void) {
        let outer = pthread_getspecific(regionKey)
        pthread_setspecific(regionKey, UnsafeRawPointer(bitPattern: 1))
        body()
        pthread_setspecific(regionKey, outer)
    }

    /// Runs `body(part)` once for each part in 0..<parts, spread over the kernel threads (the caller is one of them);
    /// returns when all ran. Another thread's region in progress makes this one run its parts on the caller alone.
    public static func run(parts: Int, _ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { body in
            var body = body
            let ran = withUnsafeMutablePointer(to: &body) { p in
                titan_pool_run(pool, parts, { ctx, part in
                    ctx!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(part)
                }, p)
            }
            if ran == 0 { for part in 0..<parts { body(part) } }
        }
    }

    /// The pool behind `run`, with `count` - 1 workers (a new one when `count` grows; the old one's workers sleep).
    private static var pool: OpaquePointer {
        poolLock.lock()
        defer { poolLock.unlock() }
        if let p = pools[count] { return p }
        guard let p = titan_pool_start(Int32(count - 1), spinNanoseconds) else {
            fatalError("KernelThreads: cannot start \(count - 1) worker threads")
        }
        pools[count] = p
        return p
    }
    nonisolated(unsafe) private static var pools: [Int: OpaquePointer] = [:]
    private static let poolLock = NSLock()
    /// How long a worker spins after a region before it sleeps: 500 µs covers most gaps between the kernels of a
    /// training step (bench_moe bf16 on one rank: the CPUs' idle share fell from 42% to 5% against 100 µs's 55%;
    /// tokens/s +8%, docs/performance.md).
    static let spinNanoseconds = 500_000

    /// Whether a loop of `work` floats should be spread over the kernel threads.
    @inline(__always)
    static func shouldSplit(work: Int) -> Bool { count > 1 && work >= minWork && !insideRegion }
}

/// Runs body over [0, n) split into up to `KernelThreads.count` contiguous ranges (serially when the work is small).
/// `costPerItem` ~ floats touched per item, to skip threading for tiny loops.
@inline(__always)
public func parallelFor(_ n: Int, costPerItem: Int = 1, _ body: (Range<Int>) -> Void) {
    guard n >= 2, KernelThreads.shouldSplit(work: n * costPerItem) else {
        if n >= 2, n * costPerItem >= IdleCPUs.minLoopWork, IdleCPUs.enabled, !KernelThreads.insideRegion {
            // Always the same halves as region parts, lent or not: a kernel nested in `body` runs the same way either way.
            IdleCPUs.run({ body(0..<(n / 2)) }, { body((n / 2)..<n) }, lendingTo: IdleCPUs.idleCPU)
        } else if n > 0 {
            body(0..<n)
        }
        return
    }
    let chunks = min(KernelThreads.count, n)
    KernelThreads.run(parts: chunks) { c in
        let lo = n * c / chunks, hi = n * (c + 1) / chunks
        if lo < hi { KernelThreads.asRegionPart { body(lo..<hi) } }
    }
}

/// Runs `body(i)` once for every item i in 0..<costs.count, each item wholly on one kernel thread (its kernels and
/// GEMMs serial). Items are taken longest first by whichever thread is free next, so the threads finish
/// together even when a thread starts late or the costs only approximate run times. Results are those of a serial
/// loop as long as items write disjoint memory. An item costing more than a thread's share would leave the other
/// threads idle: such items run first, one at a time, with their kernels split.
/// `costs` ~ floats each item touches; zero-cost items are skipped.
public func parallelForEach(costs: [Int], _ body: (Int) -> Void) {
    let total = costs.reduce(0, +)
    let t = KernelThreads.count
    guard t > 1, KernelThreads.shouldSplit(work: total) else {
        for i in costs.indices where costs[i] > 0 { body(i) }
        return
    }
    // A thread's share of the work; with fewer items than threads, each item is a share of its own.
    let share = total / max(1, min(t, costs.filter { $0 > 0 }.count))
    var small: [Int] = []
    for i in costs.indices where costs[i] > 0 {
        if costs[i] > share { body(i) } else { small.append(i) }
    }
    let order = small.sorted { costs[$0] > costs[$1] || (costs[$0] == costs[$1] && $0 < $1) }
    let queue = WorkQueue(count: order.count)
    KernelThreads.run(parts: t) { _ in
        KernelThreads.asRegionPart { while let k = queue.next() { body(order[k]) } }
    }
}

/// Hands out 0, 1, ..., count - 1, each once, to whichever thread asks next.
private final class WorkQueue: @unchecked Sendable {
    private let lock = NSLock()
    private var cursor = 0
    private let count: Int
    init(count: Int) { self.count = count }
    func next() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard cursor < count else { return nil }
        cursor += 1
        return cursor - 1
    }
}
