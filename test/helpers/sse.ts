import { signRequest } from '../../src/client/sign';
import { TEST_SECRET } from './app';

export interface SseEvent {
  id: number;
  event: string;
  data: { seq: number; type: string; [key: string]: unknown };
}

/**
 * Read a signed event stream until it ends, `stopAfter` events arrived, or `timeoutMs` passed. Returns the events
 * and whether the server ended the stream.
 */
export async function readEventStream(
  baseUrl: string,
  path: string,
  options: { lastEventId?: number; stopAfter?: number; timeoutMs?: number; onEvent?: (event: SseEvent) => void } = {},
): Promise<{ events: SseEvent[]; ended: boolean }> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), options.timeoutMs ?? 20_000);
  const headers: Record<string, string> = signRequest({ secret: TEST_SECRET, method: 'GET', path });
  if (options.lastEventId !== undefined) headers['last-event-id'] = String(options.lastEventId);
  const events: SseEvent[] = [];
  let ended = false;
  try {
    const response = await fetch(`${baseUrl}${path}`, { headers, signal: controller.signal });
    if (response.status !== 200) throw new Error(`stream answered ${response.status}: ${await response.text()}`);
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let boundary = buffer.indexOf('\n\n');
      while (boundary !== -1) {
        const block = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        boundary = buffer.indexOf('\n\n');
        const fields = Object.fromEntries(
          block
            .split('\n')
            .filter((line) => line && !line.startsWith(':'))
            .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1).trim()]),
        );
        if (fields.data === undefined) continue;
        const event: SseEvent = { id: Number(fields.id), event: fields.event, data: JSON.parse(fields.data) };
        events.push(event);
        options.onEvent?.(event);
        if (options.stopAfter !== undefined && events.length >= options.stopAfter) {
          controller.abort();
          return { events, ended: false };
        }
      }
    }
    ended = true;
  } catch (error) {
    if (!controller.signal.aborted) throw error;
  } finally {
    clearTimeout(timer);
  }
  return { events, ended };
}
