import { describe, expect, it } from 'vitest';
import { DEFAULT_CREDIT_PACKAGES } from '../../src/config';
import { insufficientCredits, recommendPackage, savingsLine } from '../../src/domain/recommendation';

const packages = [
  { name: 'starter', price: 10, credits: 250 },
  { name: 'pro', price: 20, credits: 1000 },
  { name: 'team', price: 100, credits: 4000 },
];

describe('recommendPackage', () => {
  it('picks the cheapest package that covers the shortfall', () => {
    expect(recommendPackage(150, packages)).toMatchObject({ package: 'starter', quantity: 1, cost: 10 });
    expect(recommendPackage(250, packages)).toMatchObject({ package: 'starter', quantity: 1 });
    expect(recommendPackage(251, packages)).toMatchObject({ package: 'pro', quantity: 1, cost: 20, credits: 1000 });
    expect(recommendPackage(1001, packages)).toMatchObject({ package: 'team', quantity: 1 });
  });

  it('when none covers it, the largest package bought as many times as needed', () => {
    const r = recommendPackage(9000, packages);
    expect(r).toMatchObject({ package: 'team', quantity: 3, cost: 300 });
    expect(r?.message).toBe('Top up 9000 credits or buy the team package 3 times (12000 credits, 300.00).');
  });

  it('nothing short or no packages → no recommendation', () => {
    expect(recommendPackage(0, packages)).toBeUndefined();
    expect(recommendPackage(-5, packages)).toBeUndefined();
    expect(recommendPackage(10, [])).toBeUndefined();
  });

  it('the order packages are configured in does not matter', () => {
    expect(recommendPackage(300, [...packages].reverse())?.package).toBe('pro');
  });

  it('says what to buy, with credits and price', () => {
    expect(recommendPackage(150, DEFAULT_CREDIT_PACKAGES)?.message).toBe(
      'Top up 150 credits or buy the starter package (250 credits, 9.99).',
    );
    expect(recommendPackage(600, DEFAULT_CREDIT_PACKAGES)?.message).toBe(
      'Top up 600 credits or buy the pro package (1000 credits, 29.99).',
    );
  });
});

describe('savingsLine (computed from prices, never typed in)', () => {
  it('compares credits per unit of money with the smallest package', () => {
    // pro: 50 credits per unit vs starter's 25 → 2x; team: 40 per unit → 1.6x, not the best value.
    expect(savingsLine(packages[1], packages)).toBe('Best value - 2x credits per dollar vs starter');
    expect(savingsLine(packages[2], packages)).toBe('1.6x credits per dollar vs starter');
    expect(savingsLine(packages[0], packages)).toMatch(/^Entry package - 0\.0400 per credit$/);
  });

  it('follows the prices when they change', () => {
    const cheaperTeam = packages.map((p) => (p.name === 'team' ? { ...p, price: 40 } : p));
    expect(savingsLine(cheaperTeam[2], cheaperTeam)).toBe('Best value - 4x credits per dollar vs starter');
    expect(savingsLine(cheaperTeam[1], cheaperTeam)).toBe('2x credits per dollar vs starter');
  });

  it('with the default packages: team is the best value', () => {
    const team = DEFAULT_CREDIT_PACKAGES.find((p) => p.name === 'team')!;
    expect(savingsLine(team, DEFAULT_CREDIT_PACKAGES)).toBe('Best value - 2x credits per dollar vs starter');
  });
});

describe('insufficientCredits (the 402 body)', () => {
  it('carries required, available, shortfall and the recommendation, and says what to do', () => {
    const { message, data } = insufficientCredits(500, 350, DEFAULT_CREDIT_PACKAGES);
    expect(data).toMatchObject({ required: 500, available: 350, shortfall: 150 });
    expect(data.recommendation).toMatchObject({ package: 'starter', cost: 9.99, credits: 250 });
    expect(message).toBe(
      'User requires 150 more credits (needs 500, has 350 available). Top up 150 credits or buy the starter package (250 credits, 9.99).',
    );
  });
});
