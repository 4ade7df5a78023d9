import { defineConfig } from 'vitest/config';
import react from '@vitejs/plugin-react';

// The API server for `npm run dev` (the dev server proxies API calls to it).
const api = process.env.WEFT_API ?? 'http://127.0.0.1:8188';

export default defineConfig({
  plugins: [react()],
  // Relative asset URLs: the bundle works wherever `weft serve --web-root` mounts it.
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: {
      '/api': { target: api, ws: true },
      '/ws': { target: api, ws: true },
      '^/(prompt|queue|history|object_info|view|upload|interrupt|free|system_stats|models|embeddings|features)': api,
    },
  },
  test: {
    include: ['src/**/*.test.ts', 'src/**/*.test.tsx'],
    environment: 'node',
  },
});
