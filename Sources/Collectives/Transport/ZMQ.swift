import CZeroMQ
import Foundation

// Thin, owning wrappers over libzmq handles. A socket is used by exactly one thread at a time
// (its process group's worker thread), which is what ZeroMQ requires.

/// Library-level failure of a ZeroMQ call (errno and its text).
struct ZMQCallError: Error, CustomStringConvertible {
    let call: String
    let errno: Int32
    var description: String { "\(call) failed: \(String(cString: zmq_strerror(errno))) (errno \(errno))" }
    static func last(_ call: String) -> ZMQCallError { ZMQCallError(call: call, errno: zmq_errno()) }
}

/// One ZeroMQ context: the I/O threads of a rank (or of all ranks, in single-process mode).
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init(ioThreads: Int32 = 1) {
        guard let h = zmq_ctx_new() else { fatalError("zmq_ctx_new failed: out of memory") }
        zmq_ctx_set(h, ZMQ_IO_THREADS, ioThreads)
        zmq_ctx_set(h, ZMQ_BLOCKY, 0)  // sockets default to linger 0; groups set their own linger
        handle = h
    }

    /// Makes every blocking call on this context's sockets fail at once (ETERM): how one failed
    /// thread-rank stops the others of a single-process job without waiting for their timeouts.
    public func shutdown() { zmq_ctx_shutdown(handle) }

    deinit { zmq_ctx_term(handle) }
}

/// An owning zmq_msg_t. Heap-allocated: libzmq keeps small payloads inside the struct, so it must not move.
final class ZMQMessage: ChannelMessage {
    let msg: UnsafeMutablePointer<zmq_msg_t>

    init() {
        msg = .allocate(capacity: 1)
        zmq_msg_init(msg)
    }

    /// A message with `count` bytes of its own (allocated by libzmq) for this rank to fill.
    init(size count: Int) throws {
        msg = .allocate(capacity: 1)
        guard zmq_msg_init_size(msg, count) == 0 else {
            msg.deallocate()
            throw ZMQCallError.last("zmq_msg_init_size")
        }
    }

    /// A message that borrows `bytes` without copying; `tracker` counts it until libzmq no longer
    /// needs the memory (libzmq tells us on one of its own threads).
    init(borrowing bytes: UnsafeRawPointer, count: Int, tracker: SendTracker) throws {
        msg = .allocate(capacity: 1)
        if count == 0 {
            zmq_msg_init(msg)
            return
        }
        tracker.retain()
        // The message keeps the tracker alive: libzmq may free it (on its reaper thread) after its socket closed.
        let hint = Unmanaged.passRetained(tracker).toOpaque()
        let rc = zmq_msg_init_data(msg, UnsafeMutableRawPointer(mutating: bytes), count, { _, hint in
            Unmanaged<SendTracker>.fromOpaque(hint!).takeRetainedValue().release()
        }, hint)
        if rc != 0 {
            Unmanaged<SendTracker>.fromOpaque(hint).release()
            tracker.release()
            msg.deallocate()
            throw ZMQCallError.last("zmq_msg_init_data")
        }
    }

    deinit {
        zmq_msg_close(msg)
        msg.deallocate()
    }

    var count: Int { zmq_msg_size(msg) }
    var bytes: UnsafeMutableRawPointer { zmq_msg_data(msg) }
    var hasMore: Bool { zmq_msg_more(msg) != 0 }

    /// A second message sharing this one's payload (reference-counted by libzmq, no copy).
    func share() throws -> ZMQMessage {
        let other = ZMQMessage()
        guard zmq_msg_copy(other.msg, msg) == 0 else { throw ZMQCallError.last("zmq_msg_copy") }
        return other
    }
}

/// Counts zero-copy payloads that libzmq still reads from, so a collective returns only once
/// the caller's buffers are no longer referenced.
final class SendTracker: @unchecked Sendable {
    private let condition = NSCondition()
    private var outstanding = 0

    func retain() {
        condition.lock(); outstanding += 1; condition.unlock()
    }

    func release() {
        condition.lock()
        outstanding -= 1
        if outstanding == 0 { condition.broadcast() }
        condition.unlock()
    }

    /// Waits until every borrowed payload is released; false on timeout.
    func waitAllReleased(until deadline: Date) -> Bool {
        condition.lock(); defer { condition.unlock() }
        while outstanding > 0 {
            if !condition.wait(until: deadline) { return outstanding == 0 }
        }
        return true
    }
}

final class ZMQSocket {
    let handle: UnsafeMutableRawPointer

    init(context: ZMQContext, type: Int32) throws {
        guard let h = zmq_socket(context.handle, type) else { throw ZMQCallError.last("zmq_socket") }
        handle = h
    }

    deinit { zmq_close(handle) }

    func set(_ option: Int32, _ value: Int32) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size) == 0 else {
            throw ZMQCallError.last("zmq_setsockopt(\(option))")
        }
    }

    func set(_ option: Int32, bytes: [UInt8]) throws {
        guard zmq_setsockopt(handle, option, bytes, bytes.count) == 0 else {
            throw ZMQCallError.last("zmq_setsockopt(\(option))")
        }
    }

    func bind(_ endpoint: String) throws {
        guard zmq_bind(handle, endpoint) == 0 else { throw ZMQCallError.last("zmq_bind(\(endpoint))") }
    }

    func connect(_ endpoint: String) throws {
        guard zmq_connect(handle, endpoint) == 0 else { throw ZMQCallError.last("zmq_connect(\(endpoint))") }
    }

    /// Sends `message` (ownership passes to libzmq). Returns false when the send timed out (EAGAIN).
    func send(_ message: ZMQMessage, more: Bool) throws -> Bool {
        if zmq_msg_send(message.msg, handle, more ? ZMQ_SNDMORE : 0) >= 0 { return true }
        let e = zmq_errno()
        if e == EAGAIN { return false }
        throw ZMQCallError(call: "zmq_msg_send", errno: e)
    }

    /// Copies `count` bytes into a new message and sends it. False on timeout.
    func sendCopy(_ bytes: UnsafeRawPointer, count: Int, more: Bool) throws -> Bool {
        if zmq_send(handle, bytes, count, more ? ZMQ_SNDMORE : 0) >= 0 { return true }
        let e = zmq_errno()
        if e == EAGAIN { return false }
        throw ZMQCallError(call: "zmq_send", errno: e)
    }

    /// Waits up to `milliseconds` for an incoming message; true when one is ready.
    func pollIn(milliseconds: Int) throws -> Bool {
        var item = zmq_pollitem_t(socket: handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        let rc = zmq_poll(&item, 1, milliseconds)
        if rc < 0 {
            let e = zmq_errno()
            if e == EINTR { return false }
            throw ZMQCallError(call: "zmq_poll", errno: e)
        }
        return rc > 0
    }

    /// Receives one frame without blocking; nil when none is queued.
    func receiveNow() throws -> ZMQMessage? {
        let m = ZMQMessage()
        if zmq_msg_recv(m.msg, handle, ZMQ_DONTWAIT) >= 0 { return m }
        let e = zmq_errno()
        if e == EAGAIN { return nil }
        throw ZMQCallError(call: "zmq_msg_recv", errno: e)
    }
}
