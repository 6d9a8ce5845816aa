#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always) func _log(_ x: Double) -> Double { log(x) }
@inline(__always) func _sin(_ x: Double) -> Double { sin(x) }
@inline(__always) func _cos(_ x: Double) -> Double { cos(x) }
@inline(__always) func _expf(_ x: Float) -> Float { expf(x) }
@inline(__always) func _powf(_ x: Float, _ y: Float) -> Float { powf(x, y) }
@inline(__always) func _cosf(_ x: Float) -> Float { cosf(x) }
@inline(__always) func _sinf(_ x: Float) -> Float { sinf(x) }
@inline(__always) func _pow(_ x: Double, _ y: Double) -> Double { pow(x, y) }
