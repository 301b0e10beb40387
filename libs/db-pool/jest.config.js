import { jestConfig } from '../../jest.preset.js';

export default jestConfig('db-pool', import.meta.dirname);
