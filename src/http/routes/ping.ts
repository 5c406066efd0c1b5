import { Type } from '@sinclair/typebox';
import type { App } from '../app';

const PingSchema = Type.Object({
  ok: Type.Literal(true),
  serverTime: Type.Integer({ description: 'Unix seconds, to compare with the client clock' }),
  signatureVersion: Type.Union([Type.Literal('v1'), Type.Literal('v2')]),
  bodyBytes: Type.Integer({ description: 'Length of the body the signature covered' }),
});

/** `GET|POST /v1/ping`: lets a client test its signing (a failure's 401 says exactly which check failed). */
export function registerPingRoutes(app: App): void {
  const reply = (request: { signatureVersion?: 'v1' | 'v2'; rawBody?: Buffer | null }) => ({
    ok: true as const,
    serverTime: Math.floor(Date.now() / 1000),
    signatureVersion: request.signatureVersion ?? ('v2' as const),
    bodyBytes: request.rawBody?.length ?? 0,
  });
  app.get(
    '/v1/ping',
    {
      schema: { tags: ['signing'], summary: 'Test request signing', response: { 200: PingSchema } },
    },
    async (request) => reply(request),
  );
  app.post(
    '/v1/ping',
    {
      schema: {
        tags: ['signing'],
        summary: 'Test request signing with a body (any JSON)',
        body: Type.Optional(Type.Unknown()),
        response: { 200: PingSchema },
      },
    },
    async (request) => reply(request),
  );
}
