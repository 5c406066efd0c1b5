import type { RouteExample } from './openapi';

/**
 * An example request and response per documented route, for the OpenAPI document and /docs: real answers of one
 * session (a grant, projects, a build taken to deployed, holds), lists trimmed. test/integration/openapi.test.ts
 * checks each against its route's schemas, so an example cannot drift from what the route takes and gives.
 */
export const ROUTE_EXAMPLES: Record<string, RouteExample> = {
  'POST /v1/ping': {
    body: {
      hello: 'kiln',
    },
    response: [
      200,
      {
        ok: true,
        serverTime: 1796506077,
        signatureVersion: 'v2',
        bodyBytes: 16,
      },
    ],
  },
  'GET /v1/ping': {
    response: [
      200,
      {
        ok: true,
        serverTime: 1796506078,
        signatureVersion: 'v2',
        bodyBytes: 0,
      },
    ],
  },
  'POST /v1/credits/grant': {
    body: {
      userId: 'user_42',
      credits: 1000,
      reason: 'Bought the pro package',
      source: 'purchase',
      plan: 'pro',
    },
    response: [
      200,
      {
        userId: 'user_42',
        plan: 'pro',
        balance: 1000,
        reserved: 0,
        available: 1000,
      },
    ],
  },
  'POST /v1/projects': {
    body: {
      id: 'prj_storefront',
      ownerId: 'user_42',
      name: 'Storefront',
      framework: 'nextjs',
    },
    response: [
      201,
      {
        id: 'prj_storefront',
        ownerId: 'user_42',
        name: 'Storefront',
        framework: 'nextjs',
        settings: {},
        allowConcurrentBuilds: false,
        webhookUrl: null,
        webhook: null,
        version: 1,
        createdAt: '2026-12-05T21:27:58.135Z',
        updatedAt: '2026-12-05T21:27:58.135Z',
      },
    ],
  },
  'GET /v1/projects/batch': {
    querystring: {
      ids: 'prj_storefront,prj_blog,prj_gone',
    },
    response: [
      200,
      {
        projects: [
          {
            id: 'prj_storefront',
            ownerId: 'user_42',
            name: 'Storefront',
            framework: 'nextjs',
            settings: {},
            allowConcurrentBuilds: false,
            webhookUrl: null,
            webhook: null,
            version: 1,
            createdAt: '2026-12-05T21:27:58.135Z',
            updatedAt: '2026-12-05T21:27:58.135Z',
          },
          {
            id: 'prj_blog',
            ownerId: 'user_42',
            name: 'Blog',
            framework: null,
            settings: {},
            allowConcurrentBuilds: false,
            webhookUrl: 'https://hooks.example.com/kiln',
            webhook: {
              status: 'active',
              failingSince: null,
              disabledAt: null,
              disabledReason: null,
              previousSecretValidUntil: null,
            },
            version: 1,
            createdAt: '2026-12-05T21:27:58.221Z',
            updatedAt: '2026-12-05T21:27:58.221Z',
          },
        ],
        notFound: ['prj_gone'],
      },
    ],
  },
  'GET /v1/projects/:id': {
    params: {
      id: 'prj_storefront',
    },
    response: [
      200,
      {
        id: 'prj_storefront',
        ownerId: 'user_42',
        name: 'Storefront',
        framework: 'nextjs',
        settings: {},
        allowConcurrentBuilds: false,
        webhookUrl: null,
        webhook: null,
        version: 1,
        createdAt: '2026-12-05T21:27:58.135Z',
        updatedAt: '2026-12-05T21:27:58.135Z',
      },
    ],
  },
  'PUT /v1/projects/:id': {
    params: {
      id: 'prj_blog',
    },
    body: {
      ownerId: 'user_42',
      name: 'Blog',
      framework: 'astro',
    },
    response: [
      200,
      {
        id: 'prj_blog',
        ownerId: 'user_42',
        name: 'Blog',
        framework: 'astro',
        settings: {},
        allowConcurrentBuilds: false,
        webhookUrl: null,
        webhook: null,
        version: 2,
        createdAt: '2026-12-05T21:27:58.221Z',
        updatedAt: '2026-12-05T21:27:58.448Z',
      },
    ],
  },
  'PATCH /v1/projects/:id': {
    params: {
      id: 'prj_storefront',
    },
    body: {
      settings: {
        nodeVersion: '20',
      },
    },
    response: [
      200,
      {
        id: 'prj_storefront',
        ownerId: 'user_42',
        name: 'Storefront',
        framework: 'nextjs',
        settings: {
          nodeVersion: '20',
        },
        allowConcurrentBuilds: false,
        webhookUrl: null,
        webhook: null,
        version: 2,
        createdAt: '2026-12-05T21:27:58.135Z',
        updatedAt: '2026-12-05T21:27:58.499Z',
      },
    ],
  },
  'POST /v1/builds': {
    body: {
      projectId: 'prj_storefront',
      userId: 'user_42',
      estimatedCredits: 120,
      metadata: {
        commit: '9f2c1e4',
      },
    },
    response: [
      201,
      {
        id: 'bld_IsSz-2P_KUIt',
        projectId: 'prj_storefront',
        userId: 'user_42',
        state: 'queued',
        previousState: null,
        validNextStates: ['building', 'cancelled'],
        createdAt: '2026-12-05T21:27:58.604Z',
        startedAt: null,
        finishedAt: null,
        durationMs: null,
        estimatedCredits: 120,
        actualCredits: null,
        reservationId: 'res_P-eL5Xl_t6w0XMEo',
        previewUrl: null,
        error: null,
        reason: null,
        metadata: {
          commit: '9f2c1e4',
        },
      },
    ],
  },
  'PATCH /v1/builds/:id': {
    params: {
      id: 'bld_IsSz-2P_KUIt',
    },
    body: {
      state: 'deployed',
      actualCredits: 95,
      previewUrl: 'https://storefront-9f2c1e4.example.app',
    },
    response: [
      200,
      {
        id: 'bld_IsSz-2P_KUIt',
        projectId: 'prj_storefront',
        userId: 'user_42',
        state: 'deployed',
        previousState: 'building',
        validNextStates: [],
        createdAt: '2026-12-05T21:27:58.604Z',
        startedAt: '2026-12-05T21:27:58.723Z',
        finishedAt: '2026-12-05T21:27:58.802Z',
        durationMs: 79,
        estimatedCredits: 120,
        actualCredits: 95,
        reservationId: 'res_P-eL5Xl_t6w0XMEo',
        previewUrl: 'https://storefront-9f2c1e4.example.app',
        error: null,
        reason: null,
        metadata: {
          commit: '9f2c1e4',
        },
      },
    ],
  },
  'GET /v1/builds/:id': {
    params: {
      id: 'bld_IsSz-2P_KUIt',
    },
    response: [
      200,
      {
        id: 'bld_IsSz-2P_KUIt',
        projectId: 'prj_storefront',
        userId: 'user_42',
        state: 'deployed',
        previousState: 'building',
        validNextStates: [],
        createdAt: '2026-12-05T21:27:58.604Z',
        startedAt: '2026-12-05T21:27:58.723Z',
        finishedAt: '2026-12-05T21:27:58.802Z',
        durationMs: 79,
        estimatedCredits: 120,
        actualCredits: 95,
        reservationId: 'res_P-eL5Xl_t6w0XMEo',
        previewUrl: 'https://storefront-9f2c1e4.example.app',
        error: null,
        reason: null,
        metadata: {
          commit: '9f2c1e4',
        },
      },
    ],
  },
  'GET /v1/builds': {
    querystring: {
      projectId: 'prj_storefront',
      limit: 2,
    },
    response: [
      200,
      {
        builds: [
          {
            id: 'bld_IsSz-2P_KUIt',
            projectId: 'prj_storefront',
            userId: 'user_42',
            state: 'deployed',
            previousState: 'building',
            validNextStates: [],
            createdAt: '2026-12-05T21:27:58.604Z',
            startedAt: '2026-12-05T21:27:58.723Z',
            finishedAt: '2026-12-05T21:27:58.802Z',
            durationMs: 79,
            estimatedCredits: 120,
            actualCredits: 95,
            reservationId: 'res_P-eL5Xl_t6w0XMEo',
            previewUrl: 'https://storefront-9f2c1e4.example.app',
            error: null,
            reason: null,
            metadata: {
              commit: '9f2c1e4',
            },
          },
        ],
        nextCursor: null,
      },
    ],
  },
  'GET /v1/builds/:id/events': {
    params: {
      id: 'bld_IsSz-2P_KUIt',
    },
    querystring: {
      after: 0,
      limit: 2,
    },
    response: [
      200,
      {
        events: [
          {
            seq: 1,
            type: 'queued',
            createdAt: '2026-12-05T21:27:58.604Z',
            message: 'Build queued',
          },
          {
            seq: 2,
            type: 'started',
            createdAt: '2026-12-05T21:27:58.723Z',
            message: 'Build building',
            data: {
              source: 'api',
            },
          },
        ],
      },
    ],
  },
  'POST /v1/builds/batch': {
    body: {
      builds: [
        {
          projectId: 'prj_blog',
          userId: 'user_42',
          estimatedCredits: 50,
        },
      ],
    },
    response: [
      201,
      {
        builds: [
          {
            id: 'bld_9z9CpL5vKV1b',
            projectId: 'prj_blog',
            userId: 'user_42',
            state: 'queued',
            previousState: null,
            validNextStates: ['building', 'cancelled'],
            createdAt: '2026-12-05T21:27:59.003Z',
            startedAt: null,
            finishedAt: null,
            durationMs: null,
            estimatedCredits: 50,
            actualCredits: null,
            reservationId: 'res_3kIUCWRCH9MQ1hgY',
            previewUrl: null,
            error: null,
            reason: null,
            metadata: {},
          },
        ],
      },
    ],
  },
  'POST /v1/builds/:id/cancel': {
    params: {
      id: 'bld_9z9CpL5vKV1b',
    },
    body: {
      reason: 'superseded by a newer commit',
    },
    response: [
      200,
      {
        id: 'bld_9z9CpL5vKV1b',
        projectId: 'prj_blog',
        userId: 'user_42',
        state: 'cancelled',
        previousState: 'queued',
        validNextStates: [],
        createdAt: '2026-12-05T21:27:59.003Z',
        startedAt: null,
        finishedAt: '2026-12-05T21:27:59.092Z',
        durationMs: null,
        estimatedCredits: 50,
        actualCredits: null,
        reservationId: 'res_3kIUCWRCH9MQ1hgY',
        previewUrl: null,
        error: null,
        reason: 'superseded by a newer commit',
        metadata: {},
      },
    ],
  },
  'POST /v1/builds/:id/replay': {
    params: {
      id: 'bld_IsSz-2P_KUIt',
    },
    body: {
      fromSeq: 1,
      toSeq: 3,
    },
    response: [
      200,
      {
        replayed: 3,
        fromSeq: 1,
        toSeq: 3,
        webhookDeliveries: 0,
      },
    ],
  },
  'GET /v1/builds/:id/deliveries': {
    params: {
      id: 'bld_IsSz-2P_KUIt',
    },
    response: [
      200,
      {
        deliveries: [],
        nextCursor: null,
      },
    ],
  },
  'POST /v1/credits/reserve': {
    body: {
      userId: 'user_42',
      estimatedCredits: 200,
      reason: 'Image optimisation',
    },
    response: [
      201,
      {
        reservationId: 'res_UrrNpEYrwwiBG-tN',
        reserved: 200,
        expires: '2026-12-05T21:57:59.206Z',
        available: 705,
      },
    ],
  },
  'POST /v1/credits/commit': {
    body: {
      reservationId: 'res_UrrNpEYrwwiBG-tN',
      actualCredits: 150,
    },
    response: [
      200,
      {
        charged: 150,
        refunded: 50,
        newBalance: 755,
      },
    ],
  },
  'POST /v1/credits/release': {
    body: {
      reservationId: 'res_fXsX9ZbF_YEpBJbm',
      reason: 'The job was not needed',
    },
    response: [
      200,
      {
        released: 100,
        newBalance: 755,
      },
    ],
  },
  'GET /v1/credits/reservations/:id': {
    params: {
      id: 'res_UrrNpEYrwwiBG-tN',
    },
    response: [
      200,
      {
        reservationId: 'res_UrrNpEYrwwiBG-tN',
        userId: 'user_42',
        buildId: null,
        reserved: 200,
        state: 'committed',
        expires: '2026-12-05T21:57:59.206Z',
        charged: 150,
        refunded: 50,
        reason: 'Image optimisation',
        resolutionReason: 'commit of a hold',
        createdAt: '2026-12-05T21:27:59.205Z',
        resolvedAt: '2026-12-05T21:27:59.214Z',
      },
    ],
  },
  'GET /v1/credits/balance/:userId': {
    params: {
      userId: 'user_42',
    },
    response: [
      200,
      {
        userId: 'user_42',
        plan: 'pro',
        balance: 755,
        reserved: 0,
        available: 755,
      },
    ],
  },
  'GET /v1/credits/ledger/:userId': {
    params: {
      userId: 'user_42',
    },
    querystring: {
      limit: 2,
    },
    response: [
      200,
      {
        entries: [
          {
            id: '9',
            userId: 'user_42',
            type: 'release',
            amount: 0,
            reservedChange: -100,
            balanceAfter: 755,
            reservedAfter: 0,
            reservationId: 'res_fXsX9ZbF_YEpBJbm',
            buildId: null,
            requestId: 'req_b54b16694b24bdd5bb34',
            correlationId: 'req_b54b16694b24bdd5bb34',
            reason: 'The job was not needed',
            source: null,
            createdAt: '2026-12-05T21:27:59.224Z',
          },
          {
            id: '8',
            userId: 'user_42',
            type: 'reserve',
            amount: 0,
            reservedChange: 100,
            balanceAfter: 755,
            reservedAfter: 100,
            reservationId: 'res_fXsX9ZbF_YEpBJbm',
            buildId: null,
            requestId: 'req_4f37c012b6a2dd745a17',
            correlationId: 'req_4f37c012b6a2dd745a17',
            reason: 'hold for a build',
            source: null,
            createdAt: '2026-12-05T21:27:59.219Z',
          },
        ],
        nextCursor: '8',
      },
    ],
  },
  'GET /v1/credits/audit': {
    querystring: {
      userId: 'user_42',
    },
    response: [
      200,
      {
        ok: true,
        checkedUsers: 1,
        checkedReservations: 4,
        ledgerEntries: 9,
        problems: [],
      },
    ],
  },
  'POST /v1/estimate': {
    body: {
      operation: 'build',
      projectId: 'prj_storefront',
      userId: 'user_42',
    },
    response: [
      200,
      {
        operation: 'build',
        estimatedCredits: 95,
        range: {
          low: 95,
          high: 95,
        },
        confidence: 'low',
        basis: 'all_projects',
        basedOnSamples: 1,
        sufficient: true,
        available: 755,
      },
    ],
  },
  'GET /v1/analytics/builds': {
    querystring: {
      from: '2026-12-05',
      to: '2026-12-06',
      interval: 'day',
    },
    response: [
      200,
      {
        from: '2026-12-05T00:00:00.000Z',
        to: '2026-12-06T00:00:00.000Z',
        interval: 'day',
        timezone: 'UTC',
        projectId: null,
        userId: null,
        totals: {
          created: 2,
          deployed: 1,
          failed: 0,
          failedByReason: {},
          cancelled: 1,
          successRate: 1,
          durationSeconds: {
            p50: 0.076,
            p95: 0.076,
            p99: 0.076,
          },
          queueWaitSeconds: {
            p50: 0.123,
            p95: 0.123,
          },
        },
        series: [
          {
            start: '2026-12-05T00:00:00.000Z',
            end: '2026-12-06T00:00:00.000Z',
            created: 2,
            deployed: 1,
            failed: 0,
            failedByReason: {},
            cancelled: 1,
            successRate: 1,
            durationSeconds: {
              p50: 0.076,
              p95: 0.076,
              p99: 0.076,
            },
            queueWaitSeconds: {
              p50: 0.123,
              p95: 0.123,
            },
          },
        ],
        patterns: {
          byFramework: [
            {
              framework: 'astro',
              created: 1,
              deployed: 0,
              failed: 0,
              cancelled: 1,
              successRate: null,
            },
            {
              framework: 'nextjs',
              created: 1,
              deployed: 1,
              failed: 0,
              cancelled: 0,
              successRate: 1,
            },
          ],
          byHourOfDay: [
            {
              hour: 0,
              created: 0,
              queueWaitSeconds: {
                p50: null,
                p95: null,
              },
            },
            {
              hour: 1,
              created: 0,
              queueWaitSeconds: {
                p50: null,
                p95: null,
              },
            },
            {
              hour: 2,
              created: 0,
              queueWaitSeconds: {
                p50: null,
                p95: null,
              },
            },
          ],
          byDayOfWeek: [
            {
              isoWeekday: 1,
              day: 'monday',
              created: 0,
            },
            {
              isoWeekday: 2,
              day: 'tuesday',
              created: 0,
            },
            {
              isoWeekday: 3,
              day: 'wednesday',
              created: 0,
            },
          ],
          topFeatures: [],
        },
        percentiles: {
          method: 'histogram',
          rank: 'nearest',
          maxRelativeError: 0.0488,
        },
      },
    ],
  },
  'GET /v1/analytics/usage': {
    querystring: {
      from: '2026-12-05',
      to: '2026-12-06',
      interval: 'day',
    },
    response: [
      200,
      {
        from: '2026-12-05T00:00:00.000Z',
        to: '2026-12-06T00:00:00.000Z',
        interval: 'day',
        timezone: 'UTC',
        segment: 'plan',
        userId: null,
        totals: {
          granted: 1000,
          reserved: 470,
          charged: 245,
          refunded: 75,
          released: 150,
          expired: 0,
          entries: 9,
          bySegment: [
            {
              segment: 'pro',
              granted: 1000,
              reserved: 470,
              charged: 245,
              refunded: 75,
              released: 150,
              expired: 0,
              entries: 9,
            },
          ],
        },
        series: [
          {
            start: '2026-12-05T00:00:00.000Z',
            end: '2026-12-06T00:00:00.000Z',
            granted: 1000,
            reserved: 470,
            charged: 245,
            refunded: 75,
            released: 150,
            expired: 0,
            entries: 9,
            segments: [
              {
                segment: 'pro',
                granted: 1000,
                reserved: 470,
                charged: 245,
                refunded: 75,
                released: 150,
                expired: 0,
                entries: 9,
              },
            ],
          },
        ],
        topUsers: {
          from: '2026-12-05',
          to: '2026-12-06',
          users: [
            {
              userId: 'user_42',
              plan: 'pro',
              granted: 1000,
              reserved: 470,
              charged: 245,
              refunded: 75,
              released: 150,
              expired: 0,
            },
          ],
        },
      },
    ],
  },
  'POST /v1/projects/:id/webhook-secret': {
    params: {
      id: 'prj_blog',
    },
    response: [
      200,
      {
        id: 'prj_blog',
        ownerId: 'user_42',
        name: 'Blog',
        framework: null,
        settings: {},
        allowConcurrentBuilds: false,
        webhookUrl: 'https://hooks.example.com/kiln',
        webhook: {
          status: 'active',
          failingSince: null,
          disabledAt: null,
          disabledReason: null,
          previousSecretValidUntil: '2026-12-06T21:27:58.221Z',
        },
        version: 2,
        createdAt: '2026-12-05T21:27:58.221Z',
        updatedAt: '2026-12-05T21:29:02.011Z',
        webhookSecret: 'whsec_Q2hhbmdlZCBzZWNyZXQgZm9yIHRoZSBibG9nIQ',
      },
    ],
  },
  'DELETE /v1/projects/:id': { params: { id: 'prj_blog' }, response: [204, null] },
  'GET /healthz': { response: [200, { status: 'ok', version: '0.1.0', uptimeSeconds: 5423.117 }] },
  'GET /readyz': {
    response: [200, { status: 'ready', checks: { database: 'ok', store: 'ok' }, instances: { live: 2, dead: 0 } }],
  },
  'GET /metrics': {
    response: [
      200,
      '# HELP kiln_builds_queued Builds waiting for a runner\n# TYPE kiln_builds_queued gauge\nkiln_builds_queued 3\n',
    ],
  },
  'GET /dashboard': { response: [200, '<!doctype html><html lang="en"><head><title>Kiln</title>…</html>'] },
  'GET /dashboard/data': {
    response: [
      200,
      {
        generatedAt: '2026-12-05T21:29:13.489Z',
        version: '0.1.0',
        pipeline: {
          queuedBuilds: 1,
          oldestQueuedAgeSeconds: 4,
          oldestQueuedBuildId: 'bld_PGugxuOSjVzC',
          buildingBuilds: 0,
          activeHolds: 1,
          reservedCredits: 50,
          liveInstances: 2,
          deadInstances: 1,
        },
        active: [],
        recent: [],
        lastHour: { deployed: 1, failed: 0, cancelled: 0, successRate: 1, failuresByReason: [] },
        credits: {
          lastHour: { granted: 1000, reserved: 170, charged: 95, refunded: 25, released: 0, expired: 0, entries: 6 },
          activeHolds: 1,
          reservedCredits: 50,
        },
        routes: [
          {
            method: 'POST',
            route: '/v1/builds',
            requests: 2,
            clientErrors: 0,
            serverErrors: 0,
            errorRate: 0,
            serverErrorRate: 0,
          },
        ],
        audit: null,
        auditIntervalSeconds: 300,
        dependencies: { database: 'up', store: 'up' },
        instances: [
          {
            id: 'kiln_web-1_4242_a1b2c3',
            hostname: 'web-1',
            pid: 4242,
            version: '0.1.0',
            state: 'live',
            startedAt: '2026-12-05T20:02:11.120Z',
            silentSeconds: 3.2,
            leaseSeconds: 30,
            health: {
              store: 'up',
              buildsRunning: 1,
              runnerConcurrency: 2,
              rssMb: 131.4,
              heapUsedMb: 48.2,
              eventLoopDelayP99Ms: 21.3,
              uptimeSeconds: 5222,
            },
          },
          {
            id: 'kiln_web-2_977_d4e5f6',
            hostname: 'web-2',
            pid: 977,
            version: '0.1.0',
            state: 'dead',
            startedAt: '2026-12-05T19:40:02.001Z',
            silentSeconds: 412.9,
            leaseSeconds: 30,
            health: {
              store: 'up',
              buildsRunning: 2,
              runnerConcurrency: 2,
              rssMb: 140.2,
              heapUsedMb: 51,
              eventLoopDelayP99Ms: 20.9,
              uptimeSeconds: 1380,
            },
          },
        ],
      },
    ],
  },
  'GET /v1/builds/:id/events/stream': {
    params: { id: 'bld_6pubUJLHePdt' },
    response: [
      200,
      'id: 1\nevent: queued\ndata: {"seq":1,"type":"queued","createdAt":"2026-12-05T21:27:41.331Z","message":"Build queued"}\n\n' +
        'id: 2\nevent: started\ndata: {"seq":2,"type":"started","createdAt":"2026-12-05T21:27:41.396Z","message":"Build building","data":{"source":"api"}}\n\n',
    ],
  },
};
