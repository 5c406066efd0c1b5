/**
 * What to buy when credits run short (SPEC section 2, the 402 body). Pure: the catalog is given by the caller (the
 * operator configures it with CREDIT_PACKAGES).
 */

/** A package of credits for sale (SPEC section 2's recommendation). */
export interface CreditPackage {
  name: string;
  /** Price in the operator's currency, e.g. 29.99. */
  price: number;
  credits: number;
}

export const DEFAULT_CREDIT_PACKAGES: CreditPackage[] = [
  { name: 'starter', price: 9.99, credits: 250 },
  { name: 'pro', price: 29.99, credits: 1000 },
  { name: 'team', price: 99.99, credits: 5000 },
];

/** The package to buy, how many, what it costs, and why it is a good deal. */
export interface Recommendation {
  package: string;
  credits: number;
  /** Price of one package. */
  price: number;
  /** How many packages cover the shortfall (1 unless even the largest is too small). */
  quantity: number;
  /** price × quantity, rounded to cents. */
  cost: number;
  /** Computed from prices: credits per unit of money compared with the smallest package. */
  savings: string;
  /** What to do, in one sentence. */
  message: string;
}

const cents = (value: number) => Math.round(value * 100) / 100;
const perMoney = (p: CreditPackage) => p.credits / p.price;

/** "2x", "1.3x": credits per unit of money relative to the smallest package, at most one decimal. */
function formatRatio(ratio: number): string {
  const rounded = Math.round(ratio * 10) / 10;
  return `${Number.isInteger(rounded) ? rounded.toFixed(0) : rounded.toFixed(1)}x`;
}

/**
 * The savings line for `chosen` among `packages`: "Best value - 2x credits per dollar" when no package gives
 * more credits per unit of money, "1.3x credits per dollar vs starter" when it beats the smallest package,
 * else a plain statement that it is the entry package.
 */
export function savingsLine(chosen: CreditPackage, packages: readonly CreditPackage[]): string {
  const smallest = [...packages].sort((a, b) => a.credits - b.credits || a.price - b.price)[0];
  const ratio = perMoney(chosen) / perMoney(smallest);
  const best = packages.every((p) => perMoney(p) <= perMoney(chosen) + 1e-12);
  if (ratio < 1.05) {
    return best ? 'Best value per credit' : `Entry package - ${(chosen.price / chosen.credits).toFixed(4)} per credit`;
  }
  const line = `${formatRatio(ratio)} credits per dollar vs ${smallest.name}`;
  return best ? `Best value - ${line}` : line;
}

/**
 * The cheapest package whose credits cover `shortfall`; when none does, the largest one, bought as many times
 * as needed. Undefined when nothing is short or there are no packages.
 */
export function recommendPackage(shortfall: number, packages: readonly CreditPackage[]): Recommendation | undefined {
  if (shortfall <= 0 || packages.length === 0) return undefined;
  const covering = packages
    .filter((p) => p.credits >= shortfall)
    .sort((a, b) => a.price - b.price || b.credits - a.credits);
  const chosen = covering[0] ?? [...packages].sort((a, b) => b.credits - a.credits || a.price - b.price)[0];
  const quantity = Math.ceil(shortfall / chosen.credits);
  const cost = cents(chosen.price * quantity);
  const buy =
    quantity === 1
      ? `buy the ${chosen.name} package (${chosen.credits} credits, ${chosen.price.toFixed(2)})`
      : `buy the ${chosen.name} package ${quantity} times (${chosen.credits * quantity} credits, ${cost.toFixed(2)})`;
  return {
    package: chosen.name,
    credits: chosen.credits,
    price: chosen.price,
    quantity,
    cost,
    savings: savingsLine(chosen, packages),
    message: `Top up ${shortfall} credits or ${buy}.`,
  };
}

/** The 402 INSUFFICIENT_CREDITS data and message for a need of `required` against `available`. */
export function insufficientCredits(
  required: number,
  available: number,
  packages: readonly CreditPackage[],
): {
  message: string;
  data: { required: number; available: number; shortfall: number; recommendation?: Recommendation };
} {
  const shortfall = Math.max(0, required - available);
  const recommendation = recommendPackage(shortfall, packages);
  const next = recommendation ? recommendation.message : `Top up ${shortfall} credits.`;
  return {
    message: `User requires ${shortfall} more credits (needs ${required}, has ${available} available). ${next}`,
    data: { required, available, shortfall, ...(recommendation ? { recommendation } : {}) },
  };
}
