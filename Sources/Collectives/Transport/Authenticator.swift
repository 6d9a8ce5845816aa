import CZeroMQ
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The gatekeeper of one rank's CURVE sockets: the ZAP handler of its ZeroMQ context (RFC 27: libzmq asks
/// "inproc://zeromq.zap.01" about every CURVE client that completed the cryptographic part of the handshake) admitting
/// only the job's public keys, and a monitor on every listening socket that notices the connections refused before
/// ZAP (garbage, plain ZMTP, a wrong server key, a replayed handshake). One thread serves both; each refused peer
/// address is reported through `log` once a minute at most.
///
/// A refused connection never delivers a frame to its socket, so nothing of a stranger's reaches a collective.
final class Authenticator: @unchecked Sendable {
    static let zapEndpoint = "inproc://zeromq.zap.01"
    /// Monitored events of a listening socket.
    static let monitoredEvents: Int32 = ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED
        | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
        | ZMQ_EVENT_MONITOR_STOPPED

    private let context: ZMQContext
    private let allowed: Set<[UInt8]>
    let refusals: RefusalLog
    private let lock = NSLock()
    private var pending: [Monitor] = []   // handed over by channels, picked up by the thread
    private var stopping = false
    private var nextMonitor = 0
    private let wake: (read: Int32, write: Int32)
    private let finished = DispatchSemaphore(value: 0)
    private var zap: ZMQSocket?

    /// Binds the ZAP endpoint of `context` (before any CURVE socket of it binds, or libzmq would admit every client
    /// that knows a server key) and starts the thread.
    init(context: ZMQContext, allowedKeys: [[UInt8]], rank: Int, log: @escaping @Sendable (String) -> Void) throws {
        self.context = context
        allowed = Set(allowedKeys)
        refusals = RefusalLog(log: log)
        let zap = try ZMQSocket(context: context, type: ZMQ_REP)
        try zap.set(ZMQ_LINGER, 0)
        try zap.bind(Self.zapEndpoint)
        self.zap = zap
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw ZMQCallError(call: "pipe", errno: errno) }
        wake = (fds[0], fds[1])
        _ = fcntl(wake.read, F_SETFL, fcntl(wake.read, F_GETFL) | O_NONBLOCK)
        _ = fcntl(wake.write, F_SETFL, fcntl(wake.write, F_GETFL) | O_NONBLOCK)
        let thread = Thread { [self] in serve() }
        thread.name = "titan-auth-rank\(rank)"
        thread.start()
    }

    /// Starts watching `socket` (a listening CURVE socket, before it binds): refused connections to it are reported.
    /// Called on the socket's own thread.
    func watch(_ socket: ZMQSocket, endpoint: String) throws {
        lock.lock()
        nextMonitor += 1
        let name = "inproc://titan-monitor-\(nextMonitor)"
        lock.unlock()
        guard zmq_socket_monitor(socket.handle, name, Self.monitoredEvents) == 0 else { throw ZMQCallError.last("zmq_socket_monitor") }
        let pair = try ZMQSocket(context: context, type: ZMQ_PAIR)
        try pair.set(ZMQ_LINGER, 0)
        try pair.connect(name)
        // The socket moves to the authenticator's thread (the lock is the memory barrier ZeroMQ asks for).
        lock.lock()
        pending.append(Monitor(socket: pair, endpoint: endpoint))
        lock.unlock()
        signal()
    }

    /// Stops the thread and closes its sockets (before the context is terminated).
    func stop() {
        lock.lock()
        let first = !stopping
        stopping = true
        lock.unlock()
        guard first else { return }
        signal()
        finished.wait()
        close(wake.read)
        close(wake.write)
    }

    private func signal() {
        var byte: UInt8 = 1
        _ = write(wake.write, &byte, 1)
    }

    // MARK: the thread

    private final class Monitor {
        let socket: ZMQSocket
        let endpoint: String
        /// Accepted connections not yet closed: descriptor → peer address (nil when it was gone before it could be read)
        /// and whether a handshake succeeded on this socket since (libzmq's success event does not say which connection).
        var open: [Int32: (address: String?, maybeAdmitted: Bool)] = [:]
        /// The reason of the handshake that just failed ("" when the ZAP handler reported it): libzmq's I/O thread sends
        /// that connection's "disconnected" event right after.
        var failure: String?
        /// The port this socket listens on (an accepted connection's local port).
        let port: UInt16?
        init(socket: ZMQSocket, endpoint: String) {
            self.socket = socket
            self.endpoint = endpoint
            port = endpoint.split(separator: ":").last.flatMap { UInt16($0) }
        }
    }

    private func serve() {
        var monitors: [Monitor] = []
        defer {
            monitors.removeAll()   // closes the monitor sockets on this thread
            zap = nil
            finished.signal()
        }
        guard let zap else { return }
        while true {
            lock.lock()
            let done = stopping
            monitors += pending
            pending.removeAll()
            lock.unlock()
            if done { return }

            var items = [zmq_pollitem_t(socket: nil, fd: wake.read, events: Int16(ZMQ_POLLIN), revents: 0),
                         zmq_pollitem_t(socket: zap.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)]
            items += monitors.map { zmq_pollitem_t(socket: $0.socket.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
            let rc = zmq_poll(&items, Int32(items.count), 1000)
            if rc < 0 {
                if zmq_errno() == ETERM { return }
                continue
            }
            if items[0].revents != 0 {
                var buffer = [UInt8](repeating: 0, count: 64)
                while read(wake.read, &buffer, buffer.count) > 0 {}
            }
            if items[1].revents != 0 { answerZAP(zap) }
            var stopped: [Int] = []
            for (i, monitor) in monitors.enumerated() where items[i + 2].revents != 0 {
                var events: [Event] = []
                while let event = receiveEvent(monitor.socket) {
                    if event.id == ZMQ_EVENT_MONITOR_STOPPED { stopped.append(i); break }
                    events.append(event)
                }
                handle(events, on: monitor)
            }
            for i in stopped.reversed() { monitors.remove(at: i) }
        }
    }

    /// One ZAP request: version, request id, domain, address, identity, mechanism, credentials. Admits mechanism
    /// CURVE with one of the job's public keys; refuses everything else.
    private func answerZAP(_ zap: ZMQSocket) {
        var frames: [[UInt8]] = []
        repeat {
            guard let m = try? zap.receiveNow() else { return }
            frames.append(Array(UnsafeRawBufferPointer(start: m.bytes, count: m.count)))
            if !m.hasMore { break }
        } while true
        let text = { (i: Int) in i < frames.count ? String(decoding: frames[i], as: UTF8.self) : "" }
        let requestID = frames.count > 1 ? frames[1] : []
        let address = text(3), mechanism = text(5)
        var admitted = false
        var reason = ""
        if frames.count < 6 || text(0) != "1.0" {
            reason = "a malformed ZAP request"
        } else if mechanism != "CURVE" {
            reason = "mechanism \(mechanism), not CURVE"
        } else if frames.count < 7 || !allowed.contains(frames[6]) {
            reason = "a CURVE key that is not one of this job's (another job's secret, or none)"
        } else {
            admitted = true
        }
        if !admitted { refusals.refused(address: address.isEmpty ? nil : address, reason: reason, endpoint: nil) }
        let reply: [[UInt8]] = [Array("1.0".utf8), requestID, Array((admitted ? "200" : "400").utf8),
                                Array((admitted ? "OK" : "not a member of this job").utf8), [], []]
        for (i, frame) in reply.enumerated() {
            let more = i < reply.count - 1
            let sent = frame.withUnsafeBytes { try? zap.sendCopy($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, count: frame.count, more: more) }
            if sent != true { return }
        }
    }

    private struct Event { var id: Int32; var value: UInt32 }

    /// A monitor event: frame 1 is a 16-bit event id and a 32-bit value, frame 2 the socket's endpoint.
    private func receiveEvent(_ socket: ZMQSocket) -> Event? {
        guard let first = try? socket.receiveNow() else { return nil }
        var event: Event?
        if first.count >= 6 {
            let p = UnsafeRawPointer(first.bytes)
            event = Event(id: Int32(p.loadUnaligned(as: UInt16.self)), value: p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        }
        var more = first.hasMore
        while more, let next = try? socket.receiveNow() { more = next.hasMore }
        return event ?? Event(id: 0, value: 0)
    }

    /// The events waiting on one monitor, in order. The peer addresses of accepted descriptors are read first, at
    /// once: libzmq's I/O thread closes a descriptor as soon as it refuses the connection, and the kernel may give its
    /// number to the next connection. So an address is read only for a descriptor the batch does not also disconnect;
    /// one that it does may be another connection's by now (a stranger's, or a rank's), and is left unknown rather than
    /// blamed on someone else.
    private func handle(_ events: [Event], on monitor: Monitor) {
        var address: [Int: String] = [:]   // event index → the peer address of the descriptor it accepted
        var disconnectedLater = Set<Int32>()
        for (i, event) in events.enumerated().reversed() {
            let fd = Int32(bitPattern: event.value)
            if event.id == ZMQ_EVENT_DISCONNECTED { disconnectedLater.insert(fd) }
            else if event.id == ZMQ_EVENT_ACCEPTED, !disconnectedLater.contains(fd) {
                address[i] = Self.peerAddress(fd, listeningOn: monitor.port)
            }
        }
        for (i, event) in events.enumerated() { handle(event, peer: address[i], on: monitor) }
    }

    private func handle(_ event: Event, peer: String?, on monitor: Monitor) {
        let fd = Int32(bitPattern: event.value)
        switch event.id {
        case ZMQ_EVENT_ACCEPTED:
            if monitor.open.count > 4096 { monitor.open.removeAll() }   // events lost under a flood must not pile up
            monitor.open[fd] = (peer, false)
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
            for key in monitor.open.keys { monitor.open[key]!.maybeAdmitted = true }
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
            monitor.failure = Self.protocolErrorText(event.value)
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
            monitor.failure = ""   // the ZAP handler reported it already, with its reason
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            monitor.failure = "it closed the connection or stalled before the handshake completed (a peer without CURVE gives up so)"
        case ZMQ_EVENT_DISCONNECTED:
            let connection = monitor.open.removeValue(forKey: fd)
            let failure = monitor.failure
            monitor.failure = nil
            if let failure {
                if failure.isEmpty { return }
                refusals.refused(address: connection?.address, reason: failure, endpoint: monitor.endpoint)
            } else if let connection, !connection.maybeAdmitted {
                // libzmq drops a ZMTP 1.0/2.0 greeting (what most garbage looks like) without an event of its own.
                refusals.refused(address: connection.address, reason: "it did not speak ZMTP 3 with CURVE (garbage or an old protocol)",
                                 endpoint: monitor.endpoint)
            }
        default:
            break
        }
    }

    static func protocolErrorText(_ code: UInt32) -> String {
        switch Int32(bitPattern: code) {
        case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: return "it did not offer CURVE (plain ZMTP, or another mechanism)"
        case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: return "its handshake failed the cryptographic checks (a wrong key, or replayed or forged data)"
        case ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED...ZMQ_PROTOCOL_ERROR_ZAP_INVALID_METADATA: return "the ZAP exchange failed"
        default: return String(format: "a ZMTP protocol error (0x%x: malformed or unexpected handshake data)", code)
        }
    }

    /// The peer's address of a descriptor accepted on `port`; nil when it is no longer open (or is another socket now).
    static func peerAddress(_ fd: Int32, listeningOn port: UInt16?) -> String? {
        var local = sockaddr_storage()
        var localLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &localLength) }
        }
        guard named == 0, let port else { return nil }
        let localPort: UInt16
        switch Int32(local.ss_family) {
        case AF_INET: localPort = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port } }
        case AF_INET6: localPort = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_port } }
        default: return nil
        }
        guard UInt16(bigEndian: localPort) == port else { return nil }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let ok = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST)
            }
        }
        return ok == 0 ? String(cString: host) : nil
    }
}

/// Reports refused connections, at most one line per peer address per `interval` seconds (with a count of those not
/// reported since), so a stranger hammering a port cannot flood the rank's log.
final class RefusalLog: @unchecked Sendable {
    private let log: @Sendable (String) -> Void
    private let interval: Double
    private let lock = NSLock()
    private var lastLine: [String: (time: Date, unreported: Int)] = [:]
    /// Every refusal so far (tests read it).
    private(set) var count = 0

    init(interval: Double = 60, log: @escaping @Sendable (String) -> Void) {
        self.interval = interval
        self.log = log
    }

    func refused(address: String?, reason: String, endpoint: String?) {
        let key = address ?? "an address that closed before it could be read"
        let now = Date()
        lock.lock()
        count += 1
        var line: String?
        if let last = lastLine[key], now.timeIntervalSince(last.time) < interval {
            lastLine[key]!.unreported += 1
        } else {
            let earlier = lastLine[key].map { $0.unreported > 0 ? " (\($0.unreported) more refused since the last line)" : "" } ?? ""
            lastLine[key] = (now, 0)
            line = "refused a connection from \(key)\(endpoint.map { " to \($0)" } ?? ""): \(reason)\(earlier); "
                + "further refusals from this address are reported once a minute at most"
            if lastLine.count > 4096 { lastLine = lastLine.filter { now.timeIntervalSince($0.value.time) < interval } }
        }
        lock.unlock()
        if let line { log(line) }
    }
}
