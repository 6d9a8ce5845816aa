// Small POSIX helpers for the launcher: spawning a rank in its own process group with piped
// output, decoding wait statuses, naming signals, and finding which topology hosts are this machine.

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How a rank process ended.
public enum RankStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)
    /// The launcher could not learn the status (not reaped within the timeout, or reaped elsewhere).
    case unknown

    public var succeeded: Bool { self == .exited(0) }

    /// The conventional shell exit status for this outcome (128 + signal for a signal).
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): return code
        case .signaled(let signal): return 128 + signal
        case .unknown: return 1
        }
    }

    public var description: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .signaled(let signal): return "killed by signal \(signalName(signal))"
        case .unknown: return "unknown status"
        }
    }

    /// Decodes a waitpid status (the W* macros are not imported into Swift).
    init(waitStatus status: Int32) {
        let low = status & 0x7f
        if low == 0 {
            self = .exited((status >> 8) & 0xff)
        } else if low != 0x7f {
            self = .signaled(low)
        } else {
            self = .unknown  // stopped; we never ask for stopped children, so not expected
        }
    }
}

/// "SIGKILL" for 9, and so on; "signal N" for ones without a common name.
public func signalName(_ signal: Int32) -> String {
    let names: [Int32: String] = [
        SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
        SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
        SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM", SIGTERM: "SIGTERM",
        SIGCHLD: "SIGCHLD", SIGCONT: "SIGCONT", SIGSTOP: "SIGSTOP", SIGTSTP: "SIGTSTP", SIGXCPU: "SIGXCPU",
        SIGXFSZ: "SIGXFSZ", SIGSYS: "SIGSYS",
    ]
    return names[signal] ?? "signal \(signal)"
}

/// A pipe whose ends are close-on-exec, so one rank never inherits another rank's pipe (which
/// would keep that pipe open, and the launcher waiting for its end, after the owner exits).
func makePipe() throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { throw LauncherError.system("pipe", errno) }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return (fds[0], fds[1])
}

func setNonBlocking(_ fd: Int32) {
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
}

/// Writes every byte, retrying on partial writes and EINTR. Errors (e.g. a closed terminal) are
/// ignored: losing output must not stop the launcher from supervising its ranks.
func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
            if written > 0 {
                offset += written
            } else if written < 0 && errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}

/// Starts `executable` (searched in PATH when it has no slash) as the leader of a new process
/// group, with stdin from /dev/null and stdout/stderr into the given pipe ends. Its own process
/// group lets the launcher signal the rank together with anything the rank started.
func spawnProcess(executable: String, arguments: [String], environment: [String: String],
                  stdoutFD: Int32, stderrFD: Int32) throws -> pid_t {
    #if canImport(Darwin)
    var actions: posix_spawn_file_actions_t? = nil
    var attributes: posix_spawnattr_t? = nil
    #else
    var actions = posix_spawn_file_actions_t()
    var attributes = posix_spawnattr_t()
    #endif
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, stdoutFD, 1)
    posix_spawn_file_actions_adddup2(&actions, stderrFD, 2)

    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // New process group; default handlers for the signals the launcher catches or ignores
    // (SIGPIPE is ignored while the launcher runs); no blocked signals.
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF
                                                   | POSIX_SPAWN_SETSIGMASK))
    posix_spawnattr_setpgroup(&attributes, 0)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGINT, SIGTERM, SIGPIPE, SIGHUP, SIGQUIT] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    var mask = sigset_t()
    sigemptyset(&mask)
    posix_spawnattr_setsigmask(&attributes, &mask)

    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    let result = executable.contains("/")
        ? posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        : posix_spawnp(&pid, executable, &actions, &attributes, argv, envp)
    guard result == 0 else { throw LauncherError.system("posix_spawn \(executable)", result) }
    return pid
}

/// Whether `address` (an IP or host name from a topology) names this machine: a loopback
/// address, this host's name, or the address of one of its network interfaces.
func isLocalAddress(_ address: String) -> Bool {
    let lowered = address.lowercased()
    if Topology.isLoopback(lowered) { return true }

    var nameBuffer = [CChar](repeating: 0, count: 256)
    if gethostname(&nameBuffer, nameBuffer.count) == 0 {
        let hostName = String(cString: nameBuffer).lowercased()
        if lowered == hostName || lowered == hostName.split(separator: ".").first.map(String.init) {
            return true
        }
    }

    var interfaces: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&interfaces) == 0 else { return false }
    defer { freeifaddrs(interfaces) }
    var cursor = interfaces
    while let entry = cursor {
        defer { cursor = entry.pointee.ifa_next }
        guard let socketAddress = entry.pointee.ifa_addr else { continue }
        let family = Int32(socketAddress.pointee.sa_family)
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        if family == AF_INET {
            socketAddress.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { ipv4 in
                var raw = ipv4.pointee.sin_addr
                _ = inet_ntop(AF_INET, &raw, &text, socklen_t(text.count))
            }
        } else if family == AF_INET6 {
            socketAddress.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { ipv6 in
                var raw = ipv6.pointee.sin6_addr
                _ = inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
            }
        } else {
            continue
        }
        if String(cString: text).lowercased() == lowered { return true }
    }
    return false
}
