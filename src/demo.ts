import { randomBytes } from 'node:crypto';
import { createKilnClient, signRequest } from '../packages/client/src/index';

/**
 * `kiln demo`: against a running Kiln, grant a demo user credits, create a project and a build, and print the
 * build's events live until it ends — the whole path `queued → building → deployed` with the bundled sample.
 */
export async function runDemo(
  baseUrl: string,
  secret: string,
  prefix: string,
  out: (line: string) => void,
): Promise<number> {
  // raw(): the demo prints any refusal as it came rather than throwing; one attempt, as a person is watching.
  const client = createKilnClient({ baseUrl, secret, prefix, correlationId: `demo_${Date.now()}`, retry: false });
  const suffix = randomBytes(3).toString('hex');
  const userId = `demo_user_${suffix}`;
  const steps: [string, string, unknown][] = [
    ['POST', '/v1/credits/grant', { userId, credits: 1000, reason: 'demo credits', source: 'kiln_demo' }],
    ['POST', '/v1/projects', { id: `demo_${suffix}`, ownerId: userId, name: 'Kiln demo', framework: 'static' }],
    ['POST', '/v1/builds', { projectId: `demo_${suffix}`, userId, estimatedCredits: 50 }],
  ];
  let build: { id: string; state: string } | undefined;
  for (const [method, path, body] of steps) {
    const res = await client.raw<{ id: string; state: string; message?: string }>(method, path, { body });
    if (res.status >= 300) {
      out(`${method} ${path} → ${res.status}: ${res.text}`);
      return 1;
    }
    out(`${method} ${path} → ${res.status}`);
    build = res.body;
  }
  const path = `/v1/builds/${build!.id}/events/stream`;
  const stream = await fetch(`${baseUrl}${path}`, {
    headers: await signRequest({ secret, method: 'GET', path, prefix }),
  });
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of stream.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    for (let end = buffer.indexOf('\n\n'); end !== -1; end = buffer.indexOf('\n\n')) {
      const data = buffer
        .slice(0, end)
        .split('\n')
        .find((line) => line.startsWith('data: '));
      buffer = buffer.slice(end + 2);
      if (!data) continue;
      const event = JSON.parse(data.slice(6)) as { seq: number; type: string; message?: string; progress?: number };
      const progress = event.progress === undefined ? '' : ` ${Math.round(event.progress * 100)}%`;
      out(`  #${event.seq} ${event.type}${progress} ${event.message ?? ''}`);
    }
  }
  const final = await client.raw<{ state: string; previewUrl: string | null; actualCredits: number | null }>(
    'GET',
    `/v1/builds/${build!.id}`,
  );
  out(`build ${build!.id}: ${final.body.state}, ${final.body.actualCredits ?? 0} credits charged`);
  if (final.body.previewUrl) out(`preview: ${baseUrl}${final.body.previewUrl}`);
  return final.body.state === 'deployed' ? 0 : 1;
}
