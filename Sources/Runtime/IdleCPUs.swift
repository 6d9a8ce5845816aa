// Idle-CPU lending. With at least as many ranks as CPUs, the launcher binds each rank to one CPU (several ranks to each
// CPU when there are more), one kernel thread each. When a rank computes while every rank bound to another CPU waits in
// a collective (an MoE rank that got a hot expert, whose EP peers wait in the all-to-all for its output), that CPU
// would idle. Each such rank process marks on a shared board whether its training thread is blocked in a collective (a
// collective observer); a rank about to run a large GEMM or loop checks the board and, when another CPU's ranks all
// wait, runs half of it on a helper thread bound to that CPU. GEMMs this large, and loops this large, are always
// computed as the same two halves, whoever runs the second, so results do not depend on timing (loop rows never
// depended on the split; nested kernels always see a region, see KernelThreads.swift). A run is bitwise reproducible
// for a given thread count and lending setting.
import CLinux
import Foundation

public enum IdleCPUs {
    /// GEMMs with at least this many multiply-adds are computed as two fixed halves on a lending rank.
    public static let minGEMMWork = 1 << 24
    /// Loops touching at least this many floats run as two halves on a lending rank (the second lent when a CPU idles).
    public static let minLoopWork = 1 << 18

    private static var board: OpaquePointer?
    private static var helper: OpaquePointer?
    private static let lentCount = Counter()
    /// Tests: wait for the helper to take each posted half, so that it always runs it.
    public static var helperAlwaysTakes = false

    /// Off: this rank never computes a GEMM or loop in halves (`--debug.deterministic`); it still marks its waits, so
    /// other ranks may lend to its CPU.
    public static var lendsWork = true
    /// Whether this process lends: on a board, with one kernel thread.
    public static var enabled: Bool { lendsWork && board != nil && KernelThreads.count == 1 }
    /// Tasks the helper ran so far (for tests and logs).
    public static var lentTasks: Int { lentCount.value }

    /// Puts this rank on the board at `path` (`ranks` slots; this rank bound to `cpu`) and starts the helper.
    /// Call before the kernels run, once.
    public static func join(boardPath: String, ranks: Int, rank: Int, cpu: Int) throws {
        precondition(board == nil, "IdleCPUs.join called twice")
        if helper == nil {   // one helper per process, kept after `leave`
            guard let h = titan_helper_start() else { throw IdleCPUError.board(path: boardPath, "cannot start the helper thread") }
            helper = h
        }
        guard let b = titan_cpu_board_open(boardPath, Int32(ranks), Int32(rank), Int32(cpu)) else {
            throw IdleCPUError.board(path: boardPath, String(cString: strerror(errno)))
        }
        board = b
        titan_cpu_board_install(b)
        Runtime.install(boardMarker)
    }

    /// Takes this rank off the board (the helper thread stays, idle). For tests.
    public static func leave() {
        guard let b = board else { return }
        Runtime.uninstall(boardMarker)
        titan_cpu_board_install(nil)
        board = nil
        titan_cpu_board_close(b)
    }

    /// Marks this rank's slot while its training thread blocks in a collective.
    private final class BoardMarker: CollectiveObserver {
        func waitBegan() { titan_cpu_board_mark_waiting(1) }
        func waitEnded(rank: Int, start: UInt64, end: UInt64) { titan_cpu_board_mark_waiting(0) }
    }
    private static let boardMarker = BoardMarker()

    /// A CPU whose ranks all wait right now, if any.
    public static var idleCPU: Int32? {
        guard let board, KernelThreads.count == 1 else { return nil }
        let c = titan_cpu_board_idle_cpu(board)
        return c >= 0 ? c : nil
    }

    /// Runs `first` on this thread and `second` on the helper bound to `cpu` (both as kernel-region parts), or both
    /// here, one after the other, when `cpu` is nil or the helper is busy with another thread's half. Returns when
    /// both ran.
    public static func run(_ first: () -> Void, _ second: () -> Void, lendingTo cpu: Int32?) {
        func here() {
            KernelThreads.asRegionPart(first)
            KernelThreads.asRegionPart(second)
        }
        guard let cpu, let helper else { return here() }
        withoutActuallyEscaping(second) { task in
            var task = task
            withUnsafeMutablePointer(to: &task) { p in
                let posted = titan_helper_post(helper, cpu, { ctx in
                    KernelThreads.asRegionPart(ctx!.assumingMemoryBound(to: (() -> Void).self).pointee)
                }, p)
                guard posted != 0 else { return here() }
                if helperAlwaysTakes { titan_helper_wait_started(helper) }
                KernelThreads.asRegionPart(first)
                if titan_helper_finish(helper) != 0 {
                    KernelThreads.asRegionPart(p.pointee)
                } else {
                    lentCount.add()
                }
            }
        }
    }

    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        var value: Int { lock.lock(); defer { lock.unlock() }; return n }
        func add() { lock.lock(); n += 1; lock.unlock() }
    }
}

public enum IdleCPUError: Error, CustomStringConvertible {
    case board(path: String, String)
    public var description: String {
        switch self { case .board(let path, let why): return "idle-CPU board \(path): \(why)" }
    }
}
