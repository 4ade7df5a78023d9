// Socket typing: ComfyUI's link rule and the colour of each type.

/**
 * ComfyUI's rule (`comfy_execution/validation.py validate_node_input`): equal types, `*` on
 * either side, or comma-separated unions that overlap.
 */
export function typesCompatible(outputType: string, inputType: string): boolean {
  const a = String(outputType ?? '').trim();
  const b = String(inputType ?? '').trim();
  if (a === b) return true;
  if (a === '*' || b === '*' || a === '' || b === '') return a === '*' || b === '*';
  const left = new Set(a.split(',').map((t) => t.trim()).filter(Boolean));
  for (const t of b.split(',')) {
    const tt = t.trim();
    if (tt && (left.has(tt) || tt === '*')) return true;
  }
  return left.has('*');
}

/** ComfyUI's default link colours (frontend `dark` palette). */
const COLORS: Record<string, string> = {
  CLIP: '#FFD500',
  CLIP_VISION: '#A8DADC',
  CLIP_VISION_OUTPUT: '#ad7452',
  CONDITIONING: '#FFA931',
  CONTROL_NET: '#6EE7B7',
  IMAGE: '#64B5F6',
  LATENT: '#FF9CF9',
  MASK: '#81C784',
  MODEL: '#B39DDB',
  STYLE_MODEL: '#C2FFAE',
  VAE: '#FF6E6E',
  NOISE: '#B0B0B0',
  GUIDER: '#66FFFF',
  SAMPLER: '#ECB4B4',
  SIGMAS: '#CDFFCD',
  TAESD: '#DCC274',
  UPSCALE_MODEL: '#9A9A9A',
  GLIGEN: '#A0A0FF',
  INT: '#29699c',
  FLOAT: '#29699c',
  STRING: '#77ff77',
  BOOLEAN: '#b4b4ff',
  COMBO: '#a0a0a0',
  '*': '#cccccc',
};

export function typeColor(type: string): string {
  if (COLORS[type]) return COLORS[type];
  if (type.includes(',')) return COLORS[type.split(',')[0].trim()] ?? '#cccccc';
  // A stable colour for custom types.
  let h = 0;
  for (let i = 0; i < type.length; i++) h = (h * 31 + type.charCodeAt(i)) >>> 0;
  return `hsl(${h % 360} 60% 62%)`;
}
