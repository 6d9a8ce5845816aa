import CSodium
import CZeroMQ
import Foundation

// The job secret and the CURVE keys of a job's ranks.
//
// Every tcp job has a 32-byte secret (the launcher draws it from a CSPRNG, or reads it from --job-secret-file). Each
// rank's Curve25519 keypair is derived from it, so every rank computes every peer's public key and nothing is
// exchanged: holding the secret is being a member of the job. A rank's PULL socket is a CURVE server with its own
// keypair; its PUSH sockets are CURVE clients that know the server's public key; the ZAP handler of each rank admits
// only the job's public keys (Authenticator.swift).
//
// Crypto comes from libsodium: libzmq's CURVE is built on it (libzmq links it already, and libzmq3-dev pulls in
// libsodium-dev), it is small and well kept, and it has the pieces needed: a CSPRNG (randombytes_buf: getrandom(2)),
// a keyed hash (BLAKE2b, crypto_generichash) and a KDF (crypto_kdf_derive_from_key). Foundation has no hash on Linux,
// and swift-crypto would add a minute to every clean build for the same two calls.

/// How a job's tcp traffic is protected (the topology's `transport_security`).
public enum TransportSecurity: String, Sendable, Codable, CaseIterable {
    /// CurveZMQ: authenticated, encrypted, replay-protected; only the job's own keys are admitted (the tcp default).
    case curve
    /// Plain ZMTP: anyone who reaches a rank's port can send to it. Only for a trusted network.
    case none
}

public enum CurveSupport {
    /// Whether this libzmq was built with CURVE (Debian's is: it links libsodium).
    public static var isAvailable: Bool { zmq_has("curve") != 0 }

    public static let unavailableMessage = "this libzmq was built without CURVE (zmq_has(\"curve\") is false), so tcp "
        + "traffic cannot be authenticated and encrypted: install a libzmq built with libsodium (Debian's libzmq5 is), "
        + "or set transport_security = \"none\" in the topology if the network is trusted"
}

/// A job's secret: 32 random bytes, written as 64 hex digits. Its description never shows the bytes.
public struct JobSecret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public static let byteCount = 32
    /// The variable the launcher hands its ranks the secret in (hex). Only the user that runs the job (and root) can
    /// read a process's environment (/proc/PID/environ is 0400, with ptrace access checks), the same people who can read
    /// the 0600 secret file; it is never put on a command line, which every user can read.
    public static let environmentVariable = "TITAN_JOB_SECRET"

    let bytes: [UInt8]

    public init(bytes: [UInt8]) throws {
        guard bytes.count == Self.byteCount else { throw JobSecretError.malformed("a job secret has \(Self.byteCount) bytes, got \(bytes.count)") }
        self.bytes = bytes
    }

    /// A fresh secret from the operating system's CSPRNG (libsodium's randombytes_buf: getrandom(2)).
    public static func generate() -> JobSecret {
        ensureSodium()
        var bytes = [UInt8](repeating: 0, count: byteCount)
        randombytes_buf(&bytes, byteCount)
        return try! JobSecret(bytes: bytes)
    }

    /// Parses the hex form (64 hex digits, surrounding whitespace allowed).
    public init(hex text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.count == 2 * Self.byteCount else {
            throw JobSecretError.malformed("expected \(2 * Self.byteCount) hex digits, found \(trimmed.count) characters")
        }
        var bytes: [UInt8] = []
        var high: UInt8?
        for c in trimmed.utf8 {
            let v: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): v = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): v = c - UInt8(ascii: "A") + 10
            default: throw JobSecretError.malformed("expected \(2 * Self.byteCount) hex digits, found a character that is not one")
            }
            if let h = high { bytes.append(h << 4 | v); high = nil } else { high = v }
        }
        try self.init(bytes: bytes)
    }

    /// The 64 hex digits (what the secret file and TITAN_JOB_SECRET hold).
    public var hex: String { bytes.map { String(format: "%02x", $0) }.joined() }

    public var description: String { "JobSecret(redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: []) }

    /// Every rank's public key and `rank`'s own secret key, for a job of `worldSize` ranks named `jobID`.
    public func keys(jobID: String, worldSize: Int, rank: Int) -> JobKeys {
        JobKeys(secret: self, jobID: jobID, worldSize: worldSize, rank: rank)
    }

    /// Rank `rank`'s Curve25519 secret key: master = BLAKE2b keyed with the job secret over "titan/curve/v1\0" + job id
    /// (a secret file reused for another job gives that job other keys), then libsodium's KDF with the rank as subkey
    /// id. Deterministic: every rank derives the same keys.
    func rankSecretKey(jobID: String, rank: Int) -> [UInt8] {
        Self.ensureSodium()
        let message = Array("titan/curve/v1".utf8) + [0] + Array(jobID.utf8)
        var master = [UInt8](repeating: 0, count: Int(crypto_kdf_KEYBYTES))
        _ = crypto_generichash(&master, master.count, message, UInt64(message.count), bytes, bytes.count)
        var key = [UInt8](repeating: 0, count: 32)
        let context: [CChar] = Array("titanrk1".utf8CString)   // crypto_kdf_CONTEXTBYTES = 8 characters
        _ = crypto_kdf_derive_from_key(&key, key.count, UInt64(rank), context, master)
        sodium_memzero(&master, master.count)
        return key
    }

    static func ensureSodium() {
        // Thread-safe and idempotent; -1 only when the system has no usable randomness source.
        precondition(sodium_init() >= 0, "libsodium could not initialise (no randomness source?)")
    }
}

public enum JobSecretError: Error, CustomStringConvertible, Equatable {
    case malformed(String)
    public var description: String {
        switch self { case .malformed(let reason): return "malformed job secret: \(reason)" }
    }
}

/// The CURVE keys one rank uses: every rank's public key (to reach peers and to admit them) and its own secret key.
public struct JobKeys: Sendable {
    public let rank: Int
    /// publicKeys[r]: rank r's 32-byte Curve25519 public key.
    public let publicKeys: [[UInt8]]
    let secretKey: [UInt8]

    public var publicKey: [UInt8] { publicKeys[rank] }

    init(secret: JobSecret, jobID: String, worldSize: Int, rank: Int) {
        self.rank = rank
        var publics: [[UInt8]] = []
        var mine: [UInt8] = []
        for r in 0..<worldSize {
            var s = secret.rankSecretKey(jobID: jobID, rank: r)
            publics.append(Self.publicKey(secret: s))
            if r == rank { mine = s } else { sodium_memzero(&s, s.count) }
        }
        publicKeys = publics
        secretKey = mine
    }

    /// The public key of a Curve25519 secret key, computed by libzmq (zmq_curve_public, on Z85 text).
    static func publicKey(secret: [UInt8]) -> [UInt8] {
        var secretText = [CChar](repeating: 0, count: 41)
        var publicText = [CChar](repeating: 0, count: 41)
        secret.withUnsafeBufferPointer { _ = zmq_z85_encode(&secretText, $0.baseAddress, 32) }
        guard zmq_curve_public(&publicText, secretText) == 0 else {
            fatalError("zmq_curve_public failed (errno \(zmq_errno())): this libzmq has no CURVE; check CurveSupport.isAvailable first")
        }
        var key = [UInt8](repeating: 0, count: 32)
        _ = zmq_z85_decode(&key, publicText)
        return key
    }
}
