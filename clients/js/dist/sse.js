/**
 * A Server-Sent Events parser (the WHATWG "event stream interpretation"), fed text as it
 * arrives. The client reads the stream through `fetch` rather than `EventSource` so it can
 * send an `Authorization` header and choose its own reconnect policy.
 */
/** Turns chunks of an event stream into events. */
export class SseParser {
    buffer = "";
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
        this.buffer += chunk;
        const events = [];
        let start = 0;
        for (;;) {
            const lf = this.buffer.indexOf("\n", start);
            const cr = this.buffer.indexOf("\r", start);
            let end;
            let next;
            if (cr >= 0 && (lf < 0 || cr < lf)) {
                end = cr;
                if (cr + 1 === this.buffer.length) {
                    // A line ends here; whether "\r\n" or "\r" is told by the next chunk.
                    this.afterCR = true;
                    next = cr + 1;
                }
                else {
                    next = this.buffer.charCodeAt(cr + 1) === 10 ? cr + 2 : cr + 1;
                }
            }
            else if (lf >= 0) {
                end = lf;
                next = lf + 1;
            }
            else {
                break;
            }
            const ev = this.line(this.buffer.slice(start, end));
            if (ev)
                events.push(ev);
            start = next;
        }
        this.buffer = this.buffer.slice(start);
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