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
