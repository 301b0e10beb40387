import { jestConfig } from '../../jest.preset.js';

export default jestConfig('api', import.meta.dirname);
