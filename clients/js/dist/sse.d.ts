/**
 * A Server-Sent Events parser (the WHATWG "event stream interpretation"), fed text as it
 * arrives. The client reads the stream through `fetch` rather than `EventSource` so it can
 * send an `Authorization` header and choose its own reconnect policy.
 */
/** One dispatched event. */
export interface SseEvent {
    /** The `event:` field; `message` when absent. */
    event: string;
    /** The `data:` lines, joined by `\n`. */
    data: string;
    /** The `id:` of this event, or the last one seen before it (the stream's last event id). */
    id: string | undefined;
}
/**
 * Turns chunks of an event stream into events. Linear in the stream's length however its
 * lines are cut into chunks: a line spanning many chunks (a large frame's `data:`) is kept
 * as its pieces, each scanned once, and joined when its end arrives.
 */
export declare class SseParser {
    /** The unfinished line's pieces (none holds a line end), and their total length. */
    private pending;
    private pendingLength;
    /** The previous chunk ended in `\r`: a `\n` starting the next one belongs to that line end. */
    private afterCR;
    private data;
    private eventType;
    private lastId;
    constructor(lastId?: string);
    /** Feeds a chunk of text; returns the events it completed. */
    push(chunk: string): SseEvent[];
    /** One line: a field, a comment, or the blank line that dispatches an event. */
    private line;
}
//# sourceMappingURL=sse.d.ts.map