import { type Static, Type } from '@sinclair/typebox';
import { estimateKnown } from '../../services/estimate';
import type { App, AppDeps } from '../app';
import { transactionOf } from '../idempotency';
import { Id, Token } from '../schemas';

const EstimateBody = Type.Object(
  {
    operation: Type.String({
      pattern: '^[\\w.:-]{1,64}$',
      description:
        'build, or an operation builds carry in metadata.operation; one no build has carried is refused with 400',
    }),
    projectId: Type.Optional(Id),
    userId: Type.Optional(Token),
    idempotencyKey: Type.Optional(Type.String({ minLength: 1, maxLength: 257 })),
  },
  { additionalProperties: false },
);
const Range = Type.Object({ low: Type.Integer(), high: Type.Integer() });
const EstimateSchema = Type.Object(
  {
    operation: Type.String(),
    estimatedCredits: Type.Integer(),
    range: Range,
    confidence: Type.Union([Type.Literal('high'), Type.Literal('medium'), Type.Literal('low')], {
      description: 'high: ≥ 20 of this project’s builds; medium: ≥ 5 builds; low: fewer, or the default',
    }),
    basis: Type.Union([Type.Literal('project'), Type.Literal('all_projects'), Type.Literal('default')]),
    basedOnSamples: Type.Integer(),
    sufficient: Type.Optional(Type.Boolean()),
    available: Type.Optional(Type.Integer()),
    recommendation: Type.Optional(
      Type.Object({
        package: Type.String(),
        credits: Type.Integer(),
        price: Type.Number(),
        quantity: Type.Integer(),
        cost: Type.Number(),
        savings: Type.String(),
        message: Type.String(),
      }),
    ),
  },
  { title: 'Estimate' },
);

/** Estimates (SPEC section 7). A POST that changes nothing (it still passes the idempotency hooks). */
export function registerEstimateRoutes(app: App, deps: AppDeps): void {
  app.post(
    '/v1/estimate',
    {
      schema: {
        tags: ['credits'],
        summary: 'Estimate an operation’s credits from past usage; with userId, whether they are affordable',
        body: EstimateBody,
        response: { 200: EstimateSchema },
      },
    },
    async (request) => {
      const { operation, projectId, userId } = request.body as Static<typeof EstimateBody>;
      return estimateKnown(
        transactionOf(request),
        { operation, projectId, userId },
        { defaultCredits: deps.config.defaultEstimateCredits, packages: deps.config.creditPackages },
      );
    },
  );
}
