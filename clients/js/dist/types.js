/**
 * The client's public shapes. Every 64-bit figure (offsets, sequence numbers, timestamps,
 * epochs) is a `bigint`: the server's are unsigned 64-bit and a `number` would round them.
 */
export {};
//# sourceMappingURL=types.js.map