/**
 * A Server-Sent Events parser (the WHATWG "event stream interpretation"), fed text as it
 * arrives. The client reads the stream through `fetch` rather than `EventSource` so it can
 * send an `Authorization` header and choose its own reconnect policy.
 */
/**
 * Turns chunks of an event stream into events. Linear in the stream's length however its
 * lines are cut into chunks: a line spanning many chunks (a large frame's `data:`) is kept
 * as its pieces, each scanned once, and joined when its end arrives.
 */
export class SseParser {
    /** The unfinished line's pieces (none holds a line end), and their total length. */
    pending = [];
    pendingLength = 0;
    /** The previous chunk ended in `\r`: a `\n` starting the next one belongs to that line end. */
    afterCR = false;
    data = [];
    eventType = "";
    lastId;
    constructor(lastId) {
        this.lastId = lastId;
    }
    /** Feeds a chunk of text; returns the events it completed. */
    push(chunk) {
        if (chunk === "")
            return []; // a decoder holding half a character gives ""; keep afterCR
        if (this.afterCR && chunk.startsWith("\n"))
            chunk = chunk.slice(1);
        this.afterCR = false;
        if (chunk.indexOf("\n") < 0 && chunk.indexOf("\r") < 0) {
            // No line ends here: one more piece of the unfinished line.
            if (chunk !== "") {
                this.pending.push(chunk);
                this.pendingLength += chunk.length;
            }
            return [];
        }
        const buffer = this.pending.length === 0 ? chunk : this.pending.join("") + chunk;
        // The pieces held no line end: the search starts after them.
        let from = this.pendingLength;
        this.pending = [];
        this.pendingLength = 0;
        const events = [];
        let start = 0;
        // The next "\n" and "\r" at or after `from` (-1: none left; -2: not looked for yet).
        let lf = -2;
        let cr = -2;
        for (;;) {
            if (lf !== -1 && lf < from)
                lf = buffer.indexOf("\n", from);
            if (cr !== -1 && cr < from)
                cr = buffer.indexOf("\r", from);
            let end;
            let next;
            if (cr >= 0 && (lf < 0 || cr < lf)) {
                end = cr;
                if (cr + 1 === buffer.length) {
                    // A line ends here; whether "\r\n" or "\r" is told by the next chunk.
                    this.afterCR = true;
                    next = cr + 1;
                }
                else {
                    next = buffer.charCodeAt(cr + 1) === 10 ? cr + 2 : cr + 1;
                }
            }
            else if (lf >= 0) {
                end = lf;
                next = lf + 1;
            }
            else {
                break;
            }
            const ev = this.line(buffer.slice(start, end));
            if (ev)
                events.push(ev);
            start = next;
            from = next;
        }
        if (start < buffer.length) {
            const rest = buffer.slice(start);
            this.pending.push(rest);
            this.pendingLength = rest.length;
        }
        return events;
    }
    /** One line: a field, a comment, or the blank line that dispatches an event. */
    line(line) {
        if (line === "") {
            const type = this.eventType || "message";
            this.eventType = "";
            if (this.data.length === 0)
                return undefined;
            const data = this.data.join("\n");
            this.data = [];
            return { event: type, data, id: this.lastId };
        }
        if (line.startsWith(":"))
            return undefined; // a comment: the server's `: ping`
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" "))
            value = value.slice(1);
        switch (field) {
            case "event":
                this.eventType = value;
                break;
            case "data":
                this.data.push(value);
                break;
            case "id":
                if (!value.includes("\0"))
                    this.lastId = value;
                break;
            default:
                // `retry:` and unknown fields: the client keeps its own reconnect policy.
                break;
        }
        return undefined;
    }
}
//# sourceMappingURL=sse.js.map