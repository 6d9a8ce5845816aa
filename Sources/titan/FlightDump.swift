import CLinux
import Cluster
import Collectives
import Foundation

/// Writes the flight records of this process's ranks to DUMP/flight/rank-K.json when a rank program throws or the
/// process is told to stop with SIGTERM (the launcher stops the other ranks of a failed job so). A rank that finishes
/// normally writes nothing.
///
/// SIGTERM is taken by one thread with sigwait, never by a handler: the record is built by ordinary Swift code (locks,
/// allocation, JSON), which a signal handler must not run. For sigwait to get it, every other thread must block it,
/// so `blockSIGTERM` comes first, before the process starts any thread (threads inherit their creator's mask); a thread
/// started before main (OpenBLAS's pool) passes it on to the taker (`titan_route_signal_to_calling_thread`).
enum FlightDump {
    private static let lock = NSLock()
    /// The ranks running a program, by rank, with the folder their record goes to.
    nonisolated(unsafe) private static var running: [Int: (comm: Communicator, folder: String)] = [:]
    /// Run after the records at a SIGTERM, before the process ends (a scheduler's rank removes its socket files).
    nonisolated(unsafe) static var atSIGTERM: (() -> Void)?

    private static var sigterm: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        return set
    }

    /// Blocks SIGTERM in the calling thread and so in every thread it starts from now on.
    static func blockSIGTERM() {
        var set = sigterm
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Starts the thread that takes SIGTERM: it writes the record of every rank still running, then ends the process
    /// with the status the signal's default action gives (128 + SIGTERM).
    static func takeSIGTERM() {
        let thread = Thread {
            titan_route_signal_to_calling_thread(SIGTERM)
            var set = sigterm
            var signal: Int32 = 0
            while sigwait(&set, &signal) != 0 {}
            lock.lock()  // held until _exit: a rank failing now does not start a record of its own
            for (comm, folder) in running.values { save(comm, folder: folder, reason: "stopped by SIGTERM") }
            atSIGTERM?()
            _exit(128 + SIGTERM)
        }
        thread.name = "titan-sigterm"
        thread.start()
    }

    /// `comm`'s rank starts its program; its record goes to `folder` (nil: nowhere).
    static func started(_ comm: Communicator, folder: String?) {
        guard let folder, comm.traceBufferSize > 0 else { return }
        lock.lock(); defer { lock.unlock() }
        running[comm.rank] = (comm, folder)
    }

    /// Its program returned: a SIGTERM from now on writes nothing for it.
    static func finished(_ comm: Communicator) {
        lock.lock(); defer { lock.unlock() }
        running[comm.rank] = nil
    }

    /// Its program threw `error`: writes its record (when it has a folder).
    static func failed(_ comm: Communicator, error: Error) {
        lock.lock(); defer { lock.unlock() }
        if let folder = running[comm.rank]?.folder { save(comm, folder: folder, reason: "error: \(error)") }
    }

    private static func save(_ comm: Communicator, folder: String, reason: String) {
        var record = comm.flightRecord
        record.reason = reason
        do { try FlightAnalysis.write(record, folder: folder) }
        catch {
            FileHandle.standardError.write(Data("rank \(comm.rank): could not write its flight record: \(error)\n".utf8))
        }
    }
}
