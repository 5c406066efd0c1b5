import { type Static, Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import {
  audit,
  commitReservation,
  getBalance,
  getLedger,
  getReservation,
  grant,
  newReservationId,
  releaseReservation,
  reserveCredits,
  reserveOnce,
  resolveOnce,
} from '../../services/credits';
import type { App, AppDeps } from '../app';
import { sendOnce, tallyOf, transactionOf } from '../idempotency';
import { Id, PlainText, Token } from '../schemas';

/** Largest single figure a request may carry; the database stores bigint, this keeps sums far from any limit. */
const MAX_CREDITS = 1_000_000_000;
const Credits = Type.Integer({ minimum: 1, maximum: MAX_CREDITS });
const Reason = Type.String({ minLength: 1, maxLength: 500, pattern: PlainText });
const IdempotencyKey = Type.Optional(
  Type.String({ minLength: 1, maxLength: 257, description: 'Same meaning as the Idempotency-Key header' }),
);

const AccountSchema = Type.Object(
  {
    userId: Token,
    plan: Type.String(),
    balance: Type.Integer(),
    reserved: Type.Integer(),
    available: Type.Integer(),
  },
  { title: 'CreditAccount' },
);
const GrantBody = Type.Object(
  {
    userId: Token,
    credits: Credits,
    reason: Reason,
    source: Type.String({ pattern: '^[\\w.:-]{1,64}$', description: 'purchase, promotion, adjustment, …' }),
    plan: Type.Optional(Type.String({ pattern: '^[\\w-]{1,32}$' })),
    idempotencyKey: IdempotencyKey,
  },
  { additionalProperties: false },
);
const ReserveBody = Type.Object(
  {
    userId: Token,
    estimatedCredits: Credits,
    buildId: Type.Optional(Id),
    reason: Type.Optional(Reason),
    idempotencyKey: IdempotencyKey,
  },
  { additionalProperties: false },
);
const ReserveResponse = Type.Object({
  reservationId: Id,
  reserved: Type.Integer(),
  expires: Type.String({ format: 'date-time' }),
  available: Type.Integer(),
});
const CommitBody = Type.Object(
  {
    reservationId: Id,
    actualCredits: Type.Integer({ minimum: 0, maximum: MAX_CREDITS }),
    buildId: Type.Optional(Id),
    reason: Type.Optional(Reason),
    idempotencyKey: IdempotencyKey,
  },
  { additionalProperties: false },
);
const ReleaseBody = Type.Object(
  { reservationId: Id, reason: Reason, idempotencyKey: IdempotencyKey },
  { additionalProperties: false },
);
const ReservationSchema = Type.Object(
  {
    reservationId: Id,
    userId: Token,
    buildId: Type.Union([Type.String(), Type.Null()]),
    reserved: Type.Integer(),
    state: Type.Union(['active', 'committed', 'released', 'expired'].map((s) => Type.Literal(s))),
    expires: Type.String({ format: 'date-time' }),
    charged: Type.Union([Type.Integer(), Type.Null()]),
    refunded: Type.Union([Type.Integer(), Type.Null()]),
    reason: Type.String(),
    resolutionReason: Type.Union([Type.String(), Type.Null()]),
    createdAt: Type.String({ format: 'date-time' }),
    resolvedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  },
  { title: 'CreditReservation' },
);
const NullableText = Type.Union([Type.String(), Type.Null()]);
const LedgerEntrySchema = Type.Object(
  {
    id: Type.String(),
    userId: Type.String(),
    type: Type.String(),
    amount: Type.Integer({ description: 'Signed change of balance' }),
    reservedChange: Type.Integer({ description: 'Signed change of reserved' }),
    balanceAfter: Type.Integer(),
    reservedAfter: Type.Integer(),
    reservationId: NullableText,
    buildId: NullableText,
    requestId: Type.String(),
    correlationId: Type.String(),
    reason: Type.String(),
    source: NullableText,
    createdAt: Type.String({ format: 'date-time' }),
  },
  { title: 'CreditLedgerEntry' },
);
const AuditSchema = Type.Object(
  {
    ok: Type.Boolean(),
    checkedUsers: Type.Integer(),
    checkedReservations: Type.Integer(),
    ledgerEntries: Type.Integer(),
    problems: Type.Array(
      Type.Object({
        check: Type.String(),
        userId: NullableText,
        reservationId: NullableText,
        buildId: Type.Optional(NullableText),
        expected: Type.Union([Type.Integer(), Type.Null()]),
        actual: Type.Union([Type.Integer(), Type.Null()]),
      }),
    ),
  },
  { title: 'CreditAudit' },
);
const UserParams = Type.Object({ userId: Token });
const tags = ['credits'];

const actor = (request: FastifyRequest) => ({
  requestId: request.id,
  correlationId: request.correlationId || request.id,
  tally: tallyOf(request),
});

/** Credits (SPEC section 6): grant, balance, reserve, commit, release, reservation, ledger, audit. */
export function registerCreditRoutes(app: App, deps: AppDeps): void {
  grantRoute(app);
  balanceRoute(app, deps);
  reserveRoute(app, deps);
  commitRoute(app, deps);
  releaseRoute(app, deps);
  reservationRoute(app, deps);
  ledgerRoute(app, deps);
  auditRoute(app, deps);
}

/** POST /v1/credits/grant */
function grantRoute(app: App): void {
  app.post(
    '/v1/credits/grant',
    {
      config: { singleStatement: true },
      schema: {
        tags,
        summary: 'Add credits to a user (top-ups, purchases, adjustments); may set the plan',
        body: GrantBody,
        response: { 200: AccountSchema },
      },
    },
    async (request) => {
      const body = request.body as Static<typeof GrantBody>;
      return grant(transactionOf(request), { ...body, ...actor(request) });
    },
  );
}

/** GET /v1/credits/balance/:userId */
function balanceRoute(app: App, deps: AppDeps): void {
  app.get(
    '/v1/credits/balance/:userId',
    {
      schema: {
        tags,
        summary: 'A user’s balance, reserved and available credits (unknown user: zeros on the free plan)',
        params: UserParams,
        response: { 200: AccountSchema },
      },
    },
    async (request) => getBalance(deps.db, request.params.userId),
  );
}

/** POST /v1/credits/reserve */
function reserveRoute(app: App, deps: AppDeps): void {
  const { config } = deps;
  app.post(
    '/v1/credits/reserve',
    {
      config: { errors: ['INSUFFICIENT_CREDITS'], singleStatement: true, once: true },
      schema: {
        tags,
        summary: 'Hold credits for a build; 402 INSUFFICIENT_CREDITS with what to buy when short',
        body: ReserveBody,
        response: { 201: ReserveResponse },
      },
    },
    async (request, reply) => {
      const body = request.body as Static<typeof ReserveBody>;
      const input = {
        reservationId: newReservationId(),
        userId: body.userId,
        amount: body.estimatedCredits,
        buildId: body.buildId,
        reason: body.reason,
        ttlS: config.reservationTtlS,
        packages: config.creditPackages,
        ...actor(request),
      };
      reply.code(201).header('location', `/v1/credits/reservations/${input.reservationId}`);
      // The answer, with its figures known (the general way) or placeholders for them (sendOnce).
      const answer = <N extends number | string>(expires: string, available: N) => ({
        reservationId: input.reservationId,
        reserved: input.amount,
        expires,
        available,
      });
      const sent = await sendOnce(deps, request, reply, reserveOnce(input), (figure) =>
        answer(figure('expires'), figure('available')),
      );
      if (sent) return reply;
      const held = await reserveCredits(transactionOf(request), input);
      return answer(held.expiresAt, held.available);
    },
  );
}

/** POST /v1/credits/commit */
function commitRoute(app: App, deps: AppDeps): void {
  app.post(
    '/v1/credits/commit',
    {
      config: {
        errors: [
          'RESERVATION_NOT_FOUND',
          'RESERVATION_NOT_ACTIVE',
          'RESERVATION_HELD_BY_BUILD',
          'COMMIT_EXCEEDS_RESERVATION',
        ],
        singleStatement: true,
        once: true,
      },
      schema: {
        tags,
        summary: 'Charge a hold (actualCredits ≤ reserved; the rest is refunded)',
        body: CommitBody,
        response: {
          200: Type.Object({ charged: Type.Integer(), refunded: Type.Integer(), newBalance: Type.Integer() }),
        },
      },
    },
    async (request, reply) => {
      const { idempotencyKey: _key, ...body } = request.body as Static<typeof CommitBody>;
      const input = { ...body, ...actor(request) };
      const view = (figure: (name: string) => string) => ({
        charged: figure('charged'),
        refunded: figure('refunded'),
        newBalance: figure('newBalance'),
      });
      const sent = await sendOnce(deps, request, reply, resolveOnce({ commit: input }), view);
      if (sent) return reply;
      const { charged, refunded, newBalance } = await commitReservation(transactionOf(request), input);
      return { charged, refunded, newBalance };
    },
  );
}

/** POST /v1/credits/release */
function releaseRoute(app: App, deps: AppDeps): void {
  app.post(
    '/v1/credits/release',
    {
      config: {
        errors: ['RESERVATION_NOT_FOUND', 'RESERVATION_NOT_ACTIVE', 'RESERVATION_HELD_BY_BUILD'],
        singleStatement: true,
        once: true,
      },
      schema: {
        tags,
        summary: 'Give a whole hold back',
        body: ReleaseBody,
        response: { 200: Type.Object({ released: Type.Integer(), newBalance: Type.Integer() }) },
      },
    },
    async (request, reply) => {
      const body = request.body as Static<typeof ReleaseBody>;
      const input = { reservationId: body.reservationId, reason: body.reason, ...actor(request) };
      const view = (figure: (name: string) => string) => ({
        released: figure('released'),
        newBalance: figure('newBalance'),
      });
      const sent = await sendOnce(deps, request, reply, resolveOnce({ release: input }), view);
      if (sent) return reply;
      const { released, newBalance } = await releaseReservation(transactionOf(request), input);
      return { released, newBalance };
    },
  );
}

/** GET /v1/credits/reservations/:id */
function reservationRoute(app: App, deps: AppDeps): void {
  app.get(
    '/v1/credits/reservations/:id',
    {
      config: { errors: ['RESERVATION_NOT_FOUND'] },
      schema: {
        tags,
        summary: 'A reservation and its state',
        params: Type.Object({ id: Id }),
        response: { 200: ReservationSchema },
      },
    },
    async (request) => getReservation(deps.db, request.params.id),
  );
}

/** GET /v1/credits/ledger/:userId */
function ledgerRoute(app: App, deps: AppDeps): void {
  app.get(
    '/v1/credits/ledger/:userId',
    {
      schema: {
        tags,
        summary: 'A user’s ledger, newest first, in pages (pass nextCursor as cursor)',
        params: UserParams,
        querystring: Type.Object(
          {
            cursor: Type.Optional(
              Type.String({
                pattern: '^[1-9][0-9]{0,17}$',
                description: 'nextCursor of the previous page (an entry id)',
              }),
            ),
            limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ entries: Type.Array(LedgerEntrySchema), nextCursor: NullableText }),
        },
      },
    },
    async (request) => getLedger(deps.db, request.params.userId, request.query.cursor, request.query.limit),
  );
}

/** GET /v1/credits/audit */
function auditRoute(app: App, deps: AppDeps): void {
  app.get(
    '/v1/credits/audit',
    {
      schema: {
        tags,
        summary: 'Prove the books from the ledger (one user, or all)',
        querystring: Type.Object({ userId: Type.Optional(Token) }, { additionalProperties: false }),
        response: { 200: AuditSchema },
      },
    },
    async (request) => audit(deps.db, request.query.userId, 'api'),
  );
}
