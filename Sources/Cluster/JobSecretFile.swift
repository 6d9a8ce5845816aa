// The job secret's file (--job-secret-file PATH) and how a rank finds its secret.
//
// Hosts started by separate launchers (--node), or ranks started by a scheduler, share one secret through a file:
// created 0600 with a fresh secret when absent (atomically, so launchers racing to create it end with one secret),
// refused when anyone but its owner may read or write it, or when it is not 64 hex digits. A launcher that starts
// every host draws its own secret when no file is given. Ranks get it from the launcher in TITAN_JOB_SECRET
// (JobSecret.environmentVariable), or read the file themselves (`titan train --job-secret-file PATH`).

import Collectives
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct JobSecretFileError: Error, CustomStringConvertible, Equatable {
    public var path: String
    public var reason: String
    public var description: String { "job secret file \(path): \(reason)" }
}

public enum JobSecretFile {
    /// The secret in `path`, created (0600, a fresh secret) when the file does not exist.
    public static func loadOrCreate(path: String) throws -> JobSecret {
        if let secret = try load(path: path) { return secret }
        let fresh = JobSecret.generate()
        if try create(path: path, secret: fresh) { return fresh }
        // Another launcher (or rank) created it first: use theirs.
        guard let theirs = try load(path: path) else {
            throw JobSecretFileError(path: path, reason: "was created by another process and then disappeared; try again")
        }
        return theirs
    }

    /// The secret in `path`; nil when the file does not exist. Refuses a file others may read or write, one owned by
    /// another user, and one that is not a secret.
    public static func load(path: String) throws -> JobSecret? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)   // a FIFO put there must not block the open
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw JobSecretFileError(path: path, reason: "cannot be opened: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw JobSecretFileError(path: path, reason: "cannot be examined: \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw JobSecretFileError(path: path, reason: "is not a regular file")
        }
        let mode = info.st_mode & 0o7777
        if mode & 0o077 != 0 {
            throw JobSecretFileError(path: path, reason: "has mode \(String(format: "%04o", mode)): other users may read or "
                + "change it, so the secret may be known; it must be readable by its owner only: chmod 600 \(path) "
                + "(and make a new secret if others could have read it)")
        }
        if info.st_uid != geteuid() {
            throw JobSecretFileError(path: path, reason: "belongs to uid \(info.st_uid), not to this user (uid \(geteuid())); "
                + "a job secret must be the user's own")
        }
        var bytes = [UInt8](repeating: 0, count: 4096)
        let count = read(fd, &bytes, bytes.count)
        guard count >= 0 else {
            throw JobSecretFileError(path: path, reason: "cannot be read: \(String(cString: strerror(errno)))")
        }
        do {
            return try JobSecret(hex: String(decoding: bytes[..<count], as: UTF8.self))
        } catch {
            throw JobSecretFileError(path: path, reason: "does not hold a job secret (\(JobSecret.byteCount * 2) hex digits on one "
                + "line): \(error); delete it to have a new one made")
        }
    }

    /// Writes `secret` to `path` unless the file exists: a complete 0600 file in the same folder, hard-linked to `path`
    /// (link fails when `path` exists, so exactly one of several racing creators wins, and nobody ever reads a
    /// half-written file). False when the file existed.
    static func create(path: String, secret: JobSecret) throws -> Bool {
        let temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw JobSecretFileError(path: path, reason: "cannot be created: \(String(cString: strerror(errno)))")
        }
        defer { unlink(temporary) }
        let text = Array((secret.hex + "\n").utf8)
        let written = write(fd, text, text.count)
        let synced = fchmod(fd, 0o600) == 0 && fsync(fd) == 0
        close(fd)
        guard written == text.count, synced else {
            throw JobSecretFileError(path: path, reason: "cannot be written: \(String(cString: strerror(errno)))")
        }
        if link(temporary, path) == 0 { return true }
        if errno == EEXIST { return false }
        throw JobSecretFileError(path: path, reason: "cannot be created: \(String(cString: strerror(errno)))")
    }

    /// The secret of a rank process: from `file` (its --job-secret-file, created if absent), else from the variable its
    /// launcher set; nil when neither is there.
    public static func rankSecret(file: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> JobSecret? {
        if let file { return try loadOrCreate(path: file) }
        guard let hex = environment[JobSecret.environmentVariable], !hex.isEmpty else { return nil }
        do { return try JobSecret(hex: hex) } catch {
            throw JobSecretFileError(path: "$" + JobSecret.environmentVariable, reason: "\(error)")
        }
    }
}
