import { Type } from '@sinclair/typebox';

/** The error envelope (SPEC section 2) as a schema, for the OpenAPI document. */
export const ErrorEnvelopeSchema = Type.Object(
  {
    error: Type.String({ description: 'Machine-readable code, e.g. INSUFFICIENT_CREDITS' }),
    message: Type.String({ description: 'What happened and what to do next' }),
    data: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    requestId: Type.String(),
    correlationId: Type.String(),
    timestamp: Type.String({ format: 'date-time' }),
  },
  { $id: 'ErrorEnvelope', title: 'ErrorEnvelope' },
);

/** Text without control characters (names, labels). */
export const PlainText = '^[^\\u0000-\\u001F\\u007F]*$';

/** An id chosen by Kiln or a client: 1-64 of A-Z a-z 0-9 _ -. */
export const Id = Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', minLength: 1, maxLength: 64 });

/** An opaque token such as a user id: 1-128 of word characters and . : @ - */
export const Token = Type.String({ pattern: '^[\\w.:@-]{1,128}$', minLength: 1, maxLength: 128 });
