// A real OpenFeature SDK against graylane's OFREP endpoints: the server SDK with the OFREP
// provider, as an application would set them up. Run by crates/graylane/tests/ofrep.rs with
// GRAYLANE_OFREP (the admin listener's URL) and GRAYLANE_TOKEN (a viewer token); prints one
// JSON object with what each evaluation returned, and the test checks it.
import { OpenFeature } from '@openfeature/server-sdk';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const baseUrl = process.env.GRAYLANE_OFREP;
const token = process.env.GRAYLANE_TOKEN;

const details = (d) => ({
  value: d.value,
  variant: d.variant,
  reason: d.reason,
  errorCode: d.errorCode,
  flagMetadata: d.flagMetadata,
});

async function main() {
  await OpenFeature.setProviderAndWait(
    new OFREPProvider({ baseUrl, headers: [['Authorization', `Bearer ${token}`]] }),
  );
  const client = OpenFeature.getClient('graylane-test');
  const pro = { targetingKey: 'user-1', plan: 'pro' };
  const out = {
    checkoutPro: details(await client.getBooleanDetails('new-checkout', false, pro)),
    checkoutFree: details(
      await client.getBooleanDetails('new-checkout', true, { targetingKey: 'user-2', plan: 'free' }),
    ),
    banner: details(await client.getObjectDetails('banner', {}, { targetingKey: 'user-1' })),
    greeting: details(await client.getStringDetails('greeting', 'hi', { targetingKey: 'user-1' })),
    limit: details(await client.getNumberDetails('limit', 0, { targetingKey: 'user-1' })),
    releaseForced: details(
      await client.getStringDetails('release.payment', 'unknown', {
        targetingKey: 'user-1',
        'X-Release-Phase': 'canary',
      }),
    ),
    releaseUser: details(
      await client.getStringDetails('release.payment', 'unknown', { targetingKey: 'user-1' }),
    ),
    missing: details(await client.getBooleanDetails('no-such-flag', true, { targetingKey: 'u' })),
    wrongType: details(await client.getNumberDetails('new-checkout', 7, pro)),
  };
  await OpenFeature.close();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(`sdk.mjs failed: ${e?.stack ?? e}\n`);
  process.exit(1);
});
