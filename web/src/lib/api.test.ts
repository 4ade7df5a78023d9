import { afterEach, describe, expect, it, vi } from 'vitest';
import { api, needsToken, tokenUrl } from './api';

afterEach(() => vi.unstubAllGlobals());

describe('a server that asks for a token', () => {
  it('answers 401, which the editor tells apart from an unreachable server', async () => {
    vi.stubGlobal('fetch', async () =>
      new Response(JSON.stringify({ error: { type: 'unauthorized', message: 'authentication required' } }), {
        status: 401,
        headers: { 'WWW-Authenticate': 'Bearer realm="weft"' },
      }),
    );
    const error = await api.objectInfo().catch((e: unknown) => e);
    expect(needsToken(error)).toBe(true);
    expect((error as Error).message).toBe('authentication required');
    expect(needsToken(new Error('network down'))).toBe(false);
  });

  it('gets the token through the page address, keeping the rest of it', () => {
    expect(tokenUrl('http://127.0.0.1:8188/', ' s3cret ')).toBe('http://127.0.0.1:8188/?token=s3cret');
    expect(tokenUrl('http://h:1/ed/?a=1&token=old#x', 'a/b$')).toBe('http://h:1/ed/?a=1&token=a%2Fb%24#x');
  });
});
