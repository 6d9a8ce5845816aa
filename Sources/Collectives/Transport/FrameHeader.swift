// The fixed 56-byte header in front of every payload frame. The receiver checks each field it can
// predict, so a frame from another job, group or collective is a typed error, never silent corruption.
//
//   offset size field
//        0    4 magic "STTN"
//        4    2 version
//        6    2 collective kind
//        8    8 job hash (FNV-1a of the job id)
//       16    4 group slot
//       20    4 group hash (FNV-1a of the member ranks)
//       24    8 collective sequence number within the group
//       32    4 source rank (global)
//       36    4 message index from this source within the collective
//       40    8 payload length in bytes
//       48    8 delivery time, CLOCK_MONOTONIC ns, under a simulated network (LinkShaper.swift); 0: at once

public enum CollectiveKind: UInt16, Sendable, CustomStringConvertible {
    case allGather = 1, reduceScatter, allReduce, allToAll, broadcast, barrier
    /// The benchmark's transport ceiling: one message to the next member, one from the previous (`RingPass`).
    case ringPass

    public var description: String { "\(name)" }

    /// torch.distributed's name (also what observers are told).
    public var name: StaticString {
        switch self {
        case .allGather: return "all_gather"
        case .reduceScatter: return "reduce_scatter"
        case .allReduce: return "all_reduce"
        case .allToAll: return "all_to_all"
        case .broadcast: return "broadcast"
        case .barrier: return "barrier"
        case .ringPass: return "ring_pass"
        }
    }
}

struct FrameHeader: Equatable {
    static let size = 56
    static let magic: UInt32 = 0x4E54_5453  // "STTN" little-endian
    static let version: UInt16 = 2

    var kindRaw: UInt16
    var jobHash: UInt64
    var groupSlot: UInt32
    var groupHash: UInt32
    var sequence: UInt64
    var sourceRank: UInt32
    var messageIndex: UInt32
    var payloadBytes: UInt64
    var deliverAtNanoseconds: UInt64 = 0

    func encode(into p: UnsafeMutableRawPointer) {
        p.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: Self.version.littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: kindRaw.littleEndian, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: jobHash.littleEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: groupSlot.littleEndian, toByteOffset: 16, as: UInt32.self)
        p.storeBytes(of: groupHash.littleEndian, toByteOffset: 20, as: UInt32.self)
        p.storeBytes(of: sequence.littleEndian, toByteOffset: 24, as: UInt64.self)
        p.storeBytes(of: sourceRank.littleEndian, toByteOffset: 32, as: UInt32.self)
        p.storeBytes(of: messageIndex.littleEndian, toByteOffset: 36, as: UInt32.self)
        p.storeBytes(of: payloadBytes.littleEndian, toByteOffset: 40, as: UInt64.self)
        p.storeBytes(of: deliverAtNanoseconds.littleEndian, toByteOffset: 48, as: UInt64.self)
    }

    enum DecodeError: Error, Equatable {
        case wrongSize(Int)
        case badMagic(UInt32)
        case badVersion(UInt16)
    }

    static func decode(_ p: UnsafeRawPointer, count: Int) throws -> FrameHeader {
        guard count == size else { throw DecodeError.wrongSize(count) }
        let magic = UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        guard magic == Self.magic else { throw DecodeError.badMagic(magic) }
        let version = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        guard version == Self.version else { throw DecodeError.badVersion(version) }
        return FrameHeader(
            kindRaw: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 6, as: UInt16.self)),
            jobHash: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            groupSlot: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self)),
            groupHash: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self)),
            sequence: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 24, as: UInt64.self)),
            sourceRank: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt32.self)),
            messageIndex: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 36, as: UInt32.self)),
            payloadBytes: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 40, as: UInt64.self)),
            deliverAtNanoseconds: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 48, as: UInt64.self)))
    }
}

/// FNV-1a, 64-bit: a stable hash for job ids and member lists (Swift's Hasher is seeded per process).
func fnv1a64<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    return h
}
