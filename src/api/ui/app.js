document.getElementById('app').textContent = 'metafora';
