// A server that asks for a token (`--auth-token`), in a real browser: opening it shows the
// server's login page (no editor file is served); a wrong token is refused; the right one sets
// the HttpOnly cookie and brings back the same address without the token, where the editor loads
// and its socket connects on the cookie. When the API refuses the editor (a stale cookie), the
// editor shows its token form instead of retrying forever, and that form gets the cookie again.
import assert from 'node:assert/strict';
import { screenshot, startServer, waitFor, waitReady } from '../harness.mjs';

export const name = 'token: login page, cookie, clean address, editor and socket; the editor asks when refused';

const TOKEN = 'e2e-token-0123456789abcdef';

export async function run({ page, ctx, allowRequests }) {
  const server = await startServer({ token: TOKEN });
  allowRequests(new RegExp(`^${server.url}`));
  try {
    const socketOpened = new Promise((resolve) => page.on('websocket', (ws) => ws.url().includes('/ws') && resolve(ws.url())));
    let response = await page.goto(`${server.url}/`);
    assert.equal(response.status(), 401);
    await page.getByText('token needed').first().waitFor();
    await page.fill('input[name="token"]', TOKEN.replace(/f$/, 'F'));
    await Promise.all([page.waitForNavigation(), page.press('input[name="token"]', 'Enter')]);
    await page.getByText('That token is wrong').waitFor();
    assert.equal((await ctx.cookies()).length, 0);

    await page.fill('input[name="token"]', TOKEN);
    await Promise.all([page.waitForURL(`${server.url}/`), page.press('input[name="token"]', 'Enter')]);
    await waitReady(page);
    assert.equal(page.url(), `${server.url}/`, 'the token is out of the address');
    const [cookie] = await ctx.cookies();
    assert.equal(cookie?.name, 'weft_token');
    assert.equal(cookie.value, TOKEN);
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    const wsUrl = await socketOpened;
    assert.ok(!wsUrl.includes('token'), wsUrl);
    await waitFor(() => page.evaluate(() => window.weft?.exec.getState().connected), { what: 'the socket' });
    await screenshot(page, 'token-editor');

    // The page loads but the API refuses the cookie: the editor's own token form.
    // (The page itself is only served with a good cookie, so the refusal is stubbed: what the
    // server answers a stale cookie, as under `npm run dev`, where Vite serves the page.)
    await page.route('**/object_info', (route) =>
      route.fulfill({
        status: 401,
        headers: { 'WWW-Authenticate': 'Bearer realm="weft"' },
        contentType: 'application/json',
        body: JSON.stringify({ error: { type: 'unauthorized', message: 'the token is wrong' } }),
      }),
    );
    await page.reload();
    await page.getByTestId('token-form').waitFor();
    await screenshot(page, 'token-form');
    await page.unroute('**/object_info');
    await page.getByLabel('token').fill(TOKEN);
    await Promise.all([page.waitForURL(`${server.url}/`), page.getByLabel('token').press('Enter')]);
    await waitReady(page);
    // The draft survived the detour through the form.
    assert.ok((await page.locator('.react-flow__node').count()) > 0, 'the graph is back');
  } finally {
    await server.stop();
  }
}
